// The HTTP API client: bearer token from sessionStorage, errors as the API's error.message.

const TOKEN_KEY = "trioscribe.token";

/** An API error: `message` is the server's error.message, `status` the HTTP status. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

export function getToken() {
  return sessionStorage.getItem(TOKEN_KEY);
}

export function setToken(token) {
  sessionStorage.setItem(TOKEN_KEY, token);
}

export function clearToken() {
  sessionStorage.removeItem(TOKEN_KEY);
}

/** Fired on window when a request was refused with 401: the app shows the sign-in page. */
export const SIGNED_OUT = "trioscribe:signed-out";

async function errorOf(response) {
  let code = "http_error";
  let message = `${response.status} ${response.statusText}`.trim();
  try {
    const body = await response.json();
    if (body && body.error && typeof body.error.message === "string") {
      code = body.error.code || code;
      message = body.error.message;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, code, message);
}

/**
 * Call the API. Resolves to {data, headers} (data is null for 204); rejects with ApiError.
 * A 401 also clears the token and fires SIGNED_OUT.
 */
export async function request(method, path, body = undefined) {
  const headers = { Accept: "application/json" };
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  const init = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    throw new ApiError(0, "network_error", `the server could not be reached (${err.message})`);
  }
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) {
      clearToken();
      window.dispatchEvent(new CustomEvent(SIGNED_OUT, { detail: error.message }));
    }
    throw error;
  }
  const data = response.status === 204 ? null : await response.json();
  return { data, headers: response.headers };
}

export const get = (path) => request("GET", path).then((r) => r.data);
export const post = (path, body) => request("POST", path, body).then((r) => r.data);
export const patch = (path, body) => request("PATCH", path, body).then((r) => r.data);
export const del = (path) => request("DELETE", path).then((r) => r.data);

/** The URL of the rel="next" link of a Link header, or null. */
export function nextLink(header) {
  if (!header) return null;
  for (const part of header.split(",")) {
    const match = part.match(/<([^>]*)>\s*;(.*)/);
    if (match && /rel="?next"?/.test(match[2])) return match[1];
  }
  return null;
}
