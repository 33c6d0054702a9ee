// Conversations: the list (newest first, paginated, filtered) and one conversation.

import { del, get, nextLink, patch, request } from "./api.js";
import { clock, confirmDialog, h, speakerName, when } from "./dom.js";

const PAGE_SIZE = 20;
const STATUSES = ["in_progress", "processing", "completed", "failed"];
const POLL_MS = 2000;

/** Items and the next page's URL from either list shape: Omi's bare array with the cursor in
 * Link / X-Next-Cursor headers, or {"conversations", "next_cursor"}. */
export function page(data, headers, query) {
  const items = Array.isArray(data) ? data : data?.conversations ?? [];
  const link = nextLink(headers.get("Link"));
  if (link) return { items, next: link };
  const cursor = headers.get("X-Next-Cursor") || (Array.isArray(data) ? null : data?.next_cursor);
  if (!cursor) return { items, next: null };
  const params = new URLSearchParams(query);
  params.set("cursor", cursor);
  params.delete("offset");
  return { items, next: `/v1/conversations?${params}` };
}

function title(c) {
  return c.structured?.title || "Untitled conversation";
}

function badge(status) {
  return h("span", { class: `badge status-${status}`, text: status.replace("_", " ") });
}

function listItem(c) {
  return h("li", { class: "card", dataset: { id: c.id } },
    h("a", { href: `#/conversations/${encodeURIComponent(c.id)}`, class: "title" },
      c.structured?.emoji ? h("span", { "aria-hidden": "true", text: `${c.structured.emoji} ` }) : null, title(c)),
    h("div", { class: "meta" },
      badge(c.status),
      c.starred ? h("span", { class: "badge star", text: "★ starred" }) : null,
      c.discarded ? h("span", { class: "badge", text: "discarded" }) : null,
      h("time", { datetime: c.started_at || c.created_at, text: when(c.started_at || c.created_at) }),
    ),
    c.structured?.overview ? h("p", { class: "overview", text: c.structured.overview }) : null,
  );
}

/** The list page. */
export async function renderList(container, _params, { showError }) {
  const status = h("select", { id: "filter-status", name: "status" },
    h("option", { value: "", text: "All" }),
    STATUSES.map((s) => h("option", { value: s, text: s.replace("_", " ") })));
  const discarded = h("input", { type: "checkbox", id: "filter-discarded" });
  const starred = h("input", { type: "checkbox", id: "filter-starred" });
  const list = h("ul", { id: "conversation-list", class: "cards", "aria-label": "Conversations" });
  const more = h("button", { type: "button", id: "load-more", class: "quiet", text: "Load more" });
  const empty = h("p", { class: "muted", id: "conversations-empty", text: "No conversations yet." });
  const refresh = h("button", { type: "button", id: "refresh", class: "quiet", text: "Refresh" });
  let next = null;
  let filters = {};

  const accept = (c) =>
    (!filters.status || c.status === filters.status) &&
    (filters.discarded || !c.discarded) &&
    (!filters.starred || c.starred);

  async function load(url, replace) {
    more.disabled = true;
    try {
      const { data, headers } = await request("GET", url);
      const result = page(data, headers, url.split("?")[1] || "");
      const items = result.items.filter(accept).map(listItem);
      if (replace) list.replaceChildren(...items);
      else list.append(...items);
      next = result.next;
    } catch (err) {
      showError(err);
    } finally {
      more.hidden = !next;
      more.disabled = false;
      empty.hidden = list.children.length > 0;
    }
  }

  function reload() {
    filters = { status: status.value, discarded: discarded.checked, starred: starred.checked };
    const query = new URLSearchParams({
      limit: String(PAGE_SIZE),
      statuses: filters.status || STATUSES.join(","),
      include_discarded: String(filters.discarded),
    });
    if (filters.starred) query.set("starred", "true");
    return load(`/v1/conversations?${query}`, true);
  }

  for (const control of [status, discarded, starred]) control.addEventListener("change", reload);
  more.addEventListener("click", () => next && load(next, false));
  refresh.addEventListener("click", reload);
  container.append(
    h("h2", { text: "Conversations" }),
    h("form", { class: "row filters", "aria-label": "Filter conversations", onsubmit: (e) => e.preventDefault() },
      h("label", { for: "filter-status", text: "Status" }), status,
      h("label", { class: "check" }, starred, " Starred only"),
      h("label", { class: "check" }, discarded, " Include discarded"),
      refresh,
    ),
    empty,
    list,
    more,
  );
  await reload();
}

function summarySection(c) {
  const s = c.structured || {};
  const actionItems = (s.action_items || []).map((a) =>
    h("li", { class: a.completed ? "done" : "" }, a.description || String(a)));
  const events = (s.events || []).map((e) =>
    h("li", {}, e.title || "", e.start ? ` — ${when(e.start)}` : "", e.description ? `: ${e.description}` : ""));
  return h("section", { id: "summary", "aria-labelledby": "summary-title" },
    h("h3", { id: "summary-title", text: "Summary" }),
    s.overview ? h("p", { id: "overview", text: s.overview })
      : h("p", { class: "muted", text: c.status === "completed" ? "No summary." : "The summary appears once the conversation is processed." }),
    s.category ? h("p", { class: "muted" }, "Category: ", s.category) : null,
    actionItems.length ? [h("h4", { text: "Action items" }), h("ul", { id: "action-items" }, actionItems)] : null,
    events.length ? [h("h4", { text: "Events" }), h("ul", {}, events)] : null,
  );
}

function transcriptSection(c) {
  const segments = c.transcript_segments || [];
  return h("section", { "aria-labelledby": "conversation-transcript-title" },
    h("h3", { id: "conversation-transcript-title", text: "Transcript" }),
    segments.length
      ? h("ol", { id: "conversation-transcript", class: "transcript" },
        segments.map((s) => h("li", { class: "segment", dataset: { id: s.id } },
          h("span", { class: "meta" },
            h("span", { class: "speaker", text: speakerName(s) }),
            h("span", { class: "time", text: clock(s.start) })),
          h("span", { class: "text", text: s.text }))))
      : h("p", { class: "muted", text: "No transcript." }),
  );
}

/** One conversation: summary, transcript, star / discard / rename / delete. */
export async function renderOne(container, [id], { showError }) {
  const path = `/v1/conversations/${encodeURIComponent(id)}`;
  let timer = null;
  let shownStatus = null;
  let detached = false;

  async function change(fields) {
    try {
      show(await patch(path, fields));
    } catch (err) {
      showError(err);
    }
  }

  function show(c) {
    shownStatus = c.status;
    const nameInput = h("input", { id: "rename-title", name: "title", value: c.structured?.title || "", maxlength: 500, required: true });
    const renameForm = h("form", { class: "row", id: "rename-form", "aria-label": "Rename",
      onsubmit: (e) => {
        e.preventDefault();
        change({ title: nameInput.value.trim() });
      } },
    h("label", { for: "rename-title", text: "Title" }), nameInput, h("button", { type: "submit", text: "Rename" }));
    const actions = h("div", { class: "row toolbar" },
      h("button", { type: "button", id: "star", "aria-pressed": String(Boolean(c.starred)),
        onclick: () => change({ starred: !c.starred }), text: c.starred ? "★ Starred" : "☆ Star" }),
      h("button", { type: "button", id: "discard", class: "quiet",
        onclick: () => change({ discarded: !c.discarded }), text: c.discarded ? "Restore" : "Discard" }),
      h("button", { type: "button", id: "delete", class: "danger",
        onclick: async () => {
          if (!(await confirmDialog(`Delete “${title(c)}” and its transcript? This cannot be undone.`))) return;
          try {
            await del(path);
            location.hash = "#/conversations";
          } catch (err) {
            showError(err);
          }
        }, text: "Delete" }),
    );
    container.replaceChildren(...[
      h("p", {}, h("a", { href: "#/conversations", text: "← All conversations" })),
      h("h2", { id: "conversation-title" }, c.structured?.emoji ? h("span", { "aria-hidden": "true", text: `${c.structured.emoji} ` }) : null, title(c)),
      h("div", { class: "meta" },
        badge(c.status),
        c.discarded ? h("span", { class: "badge", text: "discarded" }) : null,
        h("span", { class: "muted" }, when(c.started_at || c.created_at), c.finished_at ? ` – ${when(c.finished_at)}` : "")),
      c.failure_reason ? h("p", { class: "error", text: `Processing failed: ${c.failure_reason}` }) : null,
      actions,
      renameForm,
      summarySection(c),
      transcriptSection(c),
    ].filter(Boolean));
  }

  async function poll() {
    timer = null;
    try {
      const c = await get(path);
      if (detached) return;
      if (c.status !== shownStatus) show(c);
      if (c.status === "in_progress" || c.status === "processing") timer = setTimeout(poll, POLL_MS);
    } catch (err) {
      if (!detached) showError(err);
    }
  }

  const c = await get(path);
  show(c);
  if (c.status === "in_progress" || c.status === "processing") timer = setTimeout(poll, POLL_MS);
  return () => {
    clearTimeout(timer);
    timer = null;
    detached = true;
  };
}
