// Webhooks: list, register, rotate the secret (shown once), delivery log, redeliver.

import { del, get, patch, post } from "./api.js";
import { confirmDialog, h, when } from "./dom.js";

const KINDS = ["memory_created", "day_summary", "realtime_transcript", "audio_bytes"];

function secretBox(hook, secret, verb) {
  return h("div", { class: "secret", role: "status", id: "secret" },
    h("p", {}, `${verb} ${hook.kind} → ${hook.url}. Its signing secret is shown only now; copy it:`),
    h("code", { id: "secret-value", text: secret }),
  );
}

function deliveryRow(hook, d, redeliver) {
  const last = [d.last_status ? `HTTP ${d.last_status}` : "", d.last_error || ""].filter(Boolean).join(" · ");
  return h("tr", { dataset: { id: d.id } },
    h("td", {}, when(d.created_at)),
    h("td", {}, d.kind),
    h("td", {}, h("span", { class: `badge delivery-${d.status}`, text: d.status })),
    h("td", { class: "num" }, String(d.attempts)),
    h("td", {}, last || "—"),
    h("td", {}, d.next_attempt_at && d.status !== "delivered" ? when(d.next_attempt_at) : "—"),
    h("td", {}, h("button", { type: "button", class: "quiet", "aria-label": `Redeliver ${d.kind} of ${when(d.created_at)}`,
      onclick: () => redeliver(hook, d), text: "Redeliver" })),
  );
}

/** The Webhooks page. */
export async function render(container, _params, { showError }) {
  const kind = h("select", { id: "hook-kind", name: "kind", required: true },
    KINDS.map((k) => h("option", { value: k, text: k })));
  const url = h("input", { id: "hook-url", name: "url", type: "url", required: true, placeholder: "https://example.com/hook", autocomplete: "off" });
  const interval = h("input", { id: "hook-interval", name: "interval_s", type: "number", min: 1, max: 60, step: 1, value: 5 });
  const intervalRow = h("div", { class: "stack", hidden: true },
    h("label", { for: "hook-interval", text: "Interval (s, audio_bytes)" }), interval);
  kind.addEventListener("change", () => { intervalRow.hidden = kind.value !== "audio_bytes"; });
  const notice = h("div", { id: "hook-notice" });
  const tbody = h("tbody", { id: "hook-rows" });
  const empty = h("p", { class: "muted", id: "hooks-empty", text: "No webhooks yet." });
  const log = h("section", { id: "deliveries", "aria-labelledby": "deliveries-title", hidden: true });
  let shownLog = null;

  async function showLog(hook) {
    shownLog = hook;
    try {
      const { deliveries } = await get(`/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries?limit=20`);
      log.hidden = false;
      log.replaceChildren(
        h("div", { class: "row" },
          h("h3", { id: "deliveries-title", text: `Deliveries of ${hook.kind} → ${hook.url}` }),
          h("button", { type: "button", class: "quiet", id: "deliveries-refresh", onclick: () => showLog(hook), text: "Refresh" })),
        deliveries.length
          ? h("div", { class: "scroll" }, h("table", { id: "delivery-table" },
            h("thead", {}, h("tr", {}, ["Created", "Kind", "Status", "Attempts", "Last result", "Next attempt", ""].map((t) => h("th", { scope: "col", text: t })))),
            h("tbody", {}, deliveries.map((d) => deliveryRow(hook, d, redeliver)))))
          : h("p", { class: "muted", text: "No deliveries yet (realtime kinds are not logged)." }),
      );
    } catch (err) {
      showError(err);
    }
  }

  async function redeliver(hook, d) {
    try {
      await post(`/v1/webhooks/${encodeURIComponent(hook.id)}/deliveries/${encodeURIComponent(d.id)}/redeliver`);
      notice.replaceChildren(h("p", { role: "status", text: "Redelivery queued." }));
      await showLog(hook);
    } catch (err) {
      showError(err);
    }
  }

  async function rotate(hook) {
    try {
      const result = await post(`/v1/webhooks/${encodeURIComponent(hook.id)}/rotate-secret`);
      notice.replaceChildren(secretBox(result, result.secret, "Rotated the secret of"),
        h("p", { class: "muted", text: "The old secret keeps signing too for 24 hours." }));
      await refresh();
    } catch (err) {
      showError(err);
    }
  }

  async function toggle(hook) {
    try {
      await patch(`/v1/webhooks/${encodeURIComponent(hook.id)}`, { enabled: !hook.enabled });
      await refresh();
    } catch (err) {
      showError(err);
    }
  }

  async function remove(hook) {
    if (!(await confirmDialog(`Delete the ${hook.kind} webhook to ${hook.url}?`))) return;
    try {
      await del(`/v1/webhooks/${encodeURIComponent(hook.id)}`);
      if (shownLog && shownLog.id === hook.id) log.hidden = true;
      await refresh();
    } catch (err) {
      showError(err);
    }
  }

  function row(hook) {
    const label = `${hook.kind} → ${hook.url}`;
    return h("tr", { dataset: { id: hook.id } },
      h("td", {}, hook.kind),
      h("td", { class: "url" }, hook.url),
      h("td", {}, hook.enabled ? "enabled" : `disabled${hook.disabled_reason ? ` (${hook.disabled_reason})` : ""}`),
      h("td", { class: "actions" },
        h("button", { type: "button", class: "quiet", "aria-label": `Deliveries of ${label}`, onclick: () => showLog(hook), text: "Deliveries" }),
        h("button", { type: "button", class: "quiet", "aria-label": `Rotate secret of ${label}`, onclick: () => rotate(hook), text: "Rotate secret" }),
        h("button", { type: "button", class: "quiet", "aria-label": `${hook.enabled ? "Disable" : "Enable"} ${label}`, onclick: () => toggle(hook), text: hook.enabled ? "Disable" : "Enable" }),
        h("button", { type: "button", class: "danger", "aria-label": `Delete ${label}`, onclick: () => remove(hook), text: "Delete" }),
      ),
    );
  }

  async function refresh() {
    const { webhooks } = await get("/v1/webhooks");
    tbody.replaceChildren(...webhooks.map(row));
    empty.hidden = webhooks.length > 0;
    table.hidden = webhooks.length === 0;
  }

  async function register(event) {
    event.preventDefault();
    const body = { kind: kind.value, url: url.value.trim() };
    if (kind.value === "audio_bytes") body.interval_s = Number(interval.value);
    try {
      const hook = await post("/v1/webhooks", body);
      notice.replaceChildren(secretBox(hook, hook.secret, "Registered"));
      url.value = "";
      await refresh();
    } catch (err) {
      showError(err);
    }
  }

  const table = h("div", { class: "scroll" }, h("table", { id: "hook-table" },
    h("thead", {}, h("tr", {}, ["Kind", "URL", "State", ""].map((t) => h("th", { scope: "col", text: t })))),
    tbody));
  container.append(
    h("h2", { text: "Webhooks" }),
    h("form", { id: "hook-form", class: "stack card", "aria-labelledby": "hook-form-title", onsubmit: register },
      h("h3", { id: "hook-form-title", text: "Register a webhook" }),
      h("label", { for: "hook-kind", text: "Kind" }), kind,
      h("label", { for: "hook-url", text: "URL" }), url,
      intervalRow,
      h("button", { type: "submit", id: "hook-register", text: "Register" }),
    ),
    notice,
    empty,
    table,
    log,
  );
  await refresh();
}
