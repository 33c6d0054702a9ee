// Tiny DOM helpers: elements are built with h(), never from HTML strings (no injection).

/**
 * Create an element. `props`: attributes, plus `on<event>` handlers, `text`, `dataset`.
 * Children: nodes, strings (as text) or null/false (skipped); arrays are flattened.
 */
export function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props ?? {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2).toLowerCase(), value);
    } else if (key === "text") {
      el.textContent = value;
    } else if (key === "dataset") {
      Object.assign(el.dataset, value);
    } else if (value === true) {
      el.setAttribute(key, "");
    } else {
      el.setAttribute(key, String(value));
    }
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

/** A date/time string in the user's locale ("" for null). */
export function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** Seconds as m:ss. */
export function clock(seconds) {
  const s = Math.max(0, Math.floor(Number(seconds) || 0));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

/** Ask a yes/no question in an accessible modal <dialog>; resolves true on confirm. */
export function confirmDialog(question, confirmLabel = "Delete") {
  return new Promise((resolve) => {
    const dialog = h(
      "dialog",
      { "aria-labelledby": "confirm-title", class: "confirm" },
      h("form", { method: "dialog", class: "stack" },
        h("p", { id: "confirm-title", text: question }),
        h("div", { class: "row" },
          h("button", { value: "cancel", class: "quiet", text: "Cancel" }),
          h("button", { value: "confirm", class: "danger", text: confirmLabel }),
        ),
      ),
    );
    dialog.addEventListener("close", () => {
      resolve(dialog.returnValue === "confirm");
      dialog.remove();
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** "You" for the user's own segments, "Speaker N" for SPEAKER_0N, else the label as sent. */
export function speakerName(segment) {
  if (segment.is_user) return "You";
  const match = /^SPEAKER_(\d+)$/.exec(segment.speaker || "");
  return match ? `Speaker ${Number(match[1])}` : segment.speaker || "Speaker";
}
