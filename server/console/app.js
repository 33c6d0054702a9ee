// The console's shell: sign-in, navigation (hash routes), error display.

import { ApiError, SIGNED_OUT, clearToken, get, getToken, setToken } from "./api.js";
import * as conversations from "./conversations.js";
import * as live from "./live.js";
import * as webhooks from "./webhooks.js";

const $ = (id) => document.getElementById(id);

const ROUTES = [
  { pattern: /^#\/live$/, page: "live", view: live.render, title: "Live" },
  { pattern: /^#\/conversations$/, page: "conversations", view: conversations.renderList, title: "Conversations" },
  { pattern: /^#\/conversations\/([^/]+)$/, page: "conversations", view: conversations.renderOne, title: "Conversation" },
  { pattern: /^#\/webhooks$/, page: "webhooks", view: webhooks.render, title: "Webhooks" },
];

let cleanup = null;
let renderId = 0;

/** Show an error (the API's error.message) in the page's alert region. */
export function showError(err) {
  const box = $("error");
  if (!err) {
    box.hidden = true;
    box.textContent = "";
    return;
  }
  box.textContent = err instanceof Error ? err.message : String(err);
  box.hidden = false;
}

function showSignIn(message) {
  live.stopIfRunning();
  if (cleanup) cleanup();
  cleanup = null;
  $("page").replaceChildren();
  $("nav").hidden = true;
  $("who").hidden = true;
  $("sign-in").hidden = false;
  document.title = "Sign in · trioscribe";
  showError(message || null);
  $("token").focus();
}

async function route() {
  if (!getToken()) {
    showSignIn();
    return;
  }
  const hash = location.hash || "#/live";
  const found = ROUTES.map((r) => ({ r, m: hash.match(r.pattern) })).find((x) => x.m);
  if (!found) {
    location.hash = "#/live";
    return;
  }
  if (cleanup) cleanup();
  cleanup = null;
  showError(null);
  $("sign-in").hidden = true;
  $("nav").hidden = false;
  $("who").hidden = false;
  for (const link of document.querySelectorAll("#nav a")) {
    if (link.dataset.page === found.r.page) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  document.title = `${found.r.title} · trioscribe`;
  const container = $("page");
  container.replaceChildren();
  const id = ++renderId;
  try {
    const result = await found.r.view(container, found.m.slice(1).map(decodeURIComponent), { showError });
    if (id === renderId) cleanup = typeof result === "function" ? result : null;
    else if (typeof result === "function") result();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) showError(err);
  }
}

async function signIn(event) {
  event.preventDefault();
  const token = $("token").value.trim();
  if (!token) return;
  setToken(token);
  try {
    const me = await get("/v1/me");
    $("who-name").textContent = `Signed in as ${me.name}`;
    $("token").value = "";
    if (!location.hash || location.hash === "#/") location.hash = "#/live";
    else await route();
  } catch (err) {
    if (!(err instanceof ApiError && err.status === 401)) {
      clearToken();
      showError(err);
    }
  }
}

async function start() {
  $("sign-in-form").addEventListener("submit", signIn);
  $("sign-out").addEventListener("click", () => {
    clearToken();
    showSignIn();
  });
  window.addEventListener(SIGNED_OUT, (event) => showSignIn(event.detail));
  window.addEventListener("hashchange", route);
  if (getToken()) {
    try {
      const me = await get("/v1/me");
      $("who-name").textContent = `Signed in as ${me.name}`;
    } catch (err) {
      if (!(err instanceof ApiError && err.status === 401)) showError(err);
      if (!getToken()) return;
    }
  }
  await route();
}

start();
