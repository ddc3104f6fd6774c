// The dashboard's virtual keys: list, create, rotate and revoke them through /admin/keys (the session cookie).
// A new secret lives only in the secret box's text until it is hidden or the page goes: never in storage,
// the URL or a form field the browser could restore. Everything drawn is built with textContent.
(() => {
  "use strict";

  const $ = (id) => document.getElementById(id);
  const form = $("key-form"), error = $("keys-error"), note = $("keys-note");
  const box = $("key-secret-box"), secret = $("key-secret"), copied = $("key-secret-copied");
  const DEFAULT_GRACE_MIN = 60;  // the API's own default (an hour), offered when rotating
  const MAX_GRACE_MIN = 30 * 24 * 60;  // the API takes at most 30 days
  let shownFor = null;  // the id of the key whose secret the box shows

  function el(tag, props = {}, ...children) {  // props are DOM properties (never innerHTML); children text or nodes
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props)) {
      if (name === "dataset") Object.assign(node.dataset, value);
      else node[name] = value;
    }
    node.append(...children);
    return node;
  }

  class Problem extends Error {}  // said in words next to the form, as it is

  async function call(method, path, body) {
    const init = {method, credentials: "same-origin", cache: "no-store", headers: {}};
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    const data = await response.json().catch(() => null);
    if (response.status === 401) throw new Problem("The session has ended: reload the page and sign in again.");
    if (!response.ok) {
      throw new Problem((data && data.error && data.error.message) || `${method} ${path} answered ${response.status}`);
    }
    return data;
  }

  function say(message, isError) {  // one line next to the form: what went wrong, or what was done
    error.textContent = isError ? message : "";
    note.textContent = isError ? "" : message;
  }

  async function attempt(button, action) {  // run an action with its button held, its error said in words
    button.disabled = true;
    try {
      await action();
    } catch (failure) {
      say(failure instanceof Problem ? failure.message : `The request failed: ${failure.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // -- the secret, once --------------------------------------------------------------------------------

  function showSecret(key, value) {
    shownFor = key.id;
    $("key-secret-for").textContent = `${key.name} (${key.id})`;
    secret.textContent = value;
    copied.textContent = "";
    box.hidden = false;
    box.scrollIntoView({block: "nearest"});
    $("key-secret-copy").focus();
  }

  function hideSecret() {
    shownFor = null;
    secret.textContent = "";
    copied.textContent = "";
    box.hidden = true;
    window.getSelection().removeAllRanges();
  }

  async function copySecret() {
    try {
      await navigator.clipboard.writeText(secret.textContent);
      copied.textContent = "copied";
      return;
    } catch {
      // No clipboard API (plain HTTP on another host) or no permission: select it and try the old way.
    }
    const range = document.createRange();
    range.selectNodeContents(secret);
    window.getSelection().removeAllRanges();
    window.getSelection().addRange(range);
    copied.textContent = document.execCommand("copy") ? "copied" : "selected: press Ctrl+C (or ⌘C) to copy";
  }

  // -- the table ---------------------------------------------------------------------------------------

  const pad = (n) => String(n).padStart(2, "0");
  function when(unix) {  // local time, to the minute
    if (unix == null) return "–";
    const d = new Date(unix * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
  }

  async function allKeys() {  // every page of the list
    const keys = [];
    const revoked = $("keys-show-revoked").checked ? "&include_revoked=true" : "";
    let after = "";
    for (;;) {
      const page = await call("GET", `/admin/keys?limit=1000${revoked}${after}`);
      keys.push(...page.data);
      if (!page.has_more) return keys;
      after = "&after=" + encodeURIComponent(page.last_id);
    }
  }

  function statusCell(key) {
    const cell = el("td", {}, el("span", {className: `pill status-${key.status}`}, key.status));
    if (key.previous_expires_at != null && key.status === "active") {
      cell.append(el("span", {className: "muted", title: "the secret before the last rotation works until then"},
        ` old secret until ${when(key.previous_expires_at)}`));
    }
    return cell;
  }

  function actionsCell(key, row) {
    if (key.source === "config") {
      return el("td", {}, el("span", {className: "pill own read-only",
        title: "defined in the config file: change it there and reload"}, "read-only"));
    }
    const cell = el("td", {className: "actions"});
    if (key.status === "active") {  // an expired key's new secret would be expired too
      cell.append(el("button", {type: "button", className: "small rotate", title: `Rotate ${key.name}`,
        onclick: () => openRotate(key, row)}, "Rotate"), " ");
    }
    if (key.status !== "revoked") {
      const revoke = el("button", {type: "button", className: "small revoke", title: `Revoke ${key.name}`}, "Revoke");
      revoke.onclick = () => revokeKey(key, revoke);
      cell.append(revoke);
    }
    return cell;
  }

  function draw(keys) {
    const head = el("tr", {}, ...["name", "id", "prefix", "tenant", "team", "models", "status", "created", "expires", ""]
      .map((h) => el("th", {}, h)));
    const rows = keys.map((key) => {
      const row = el("tr", {dataset: {keyId: key.id, testid: "key-row"}, className: key.status === "revoked" ? "revoked" : ""});
      row.append(
        el("td", {className: "wraps"}, el("b", {}, key.name)), el("td", {}, el("code", {}, key.id)),
        el("td", {}, key.prefix ? el("code", {}, key.prefix + "…") : "–"),
        el("td", {className: "wraps"}, key.tenant || "–"), el("td", {className: "wraps"}, key.team || "–"),
        el("td", {className: "wraps"}, key.models == null ? "all" : key.models.join(", ") || "none"),
        statusCell(key),
        key.created_at == null ? el("td", {}, "config file")
          : el("td", {title: when(key.created_at)}, when(key.created_at).slice(0, 10)),  // the minute on hover
        el("td", {}, key.expires_at == null ? "never" : when(key.expires_at)),
        actionsCell(key, row));
      return row;
    });
    if (!rows.length) rows.push(el("tr", {}, el("td", {colSpan: 10, className: "muted"}, "no keys yet")));
    $("keys-table").replaceChildren(el("table", {className: "keys-table"}, head, ...rows));
  }

  async function reload() {
    draw(await allKeys());
  }

  // -- the actions -------------------------------------------------------------------------------------

  function fields() {  // the form as the API's create body: what is left empty is left out
    const text = (id) => $(id).value.trim();
    const body = {name: text("key-name")};
    if (text("key-tenant")) body.tenant = text("key-tenant");
    if (text("key-team")) body.team = text("key-team");
    if (text("key-models")) body.models = text("key-models").split(",").map((m) => m.trim()).filter(Boolean);
    if ($("key-expires").value) {
      const at = new Date($("key-expires").value).getTime();
      if (Number.isNaN(at)) throw new Problem("The expiry is not a date and time.");
      body.expires_at = Math.floor(at / 1000);
    }
    return body;
  }

  async function create(event) {
    event.preventDefault();  // the page sends it (a plain submit would put the fields in the URL)
    await attempt($("key-create"), async () => {
      say("", false);
      const made = await call("POST", "/admin/keys", fields());
      const {value, ...key} = made;
      form.reset();
      showSecret(key, value);
      say(`Made the key ${key.name}.`, false);
      await reload();
    });
  }

  function openRotate(key, row) {
    document.querySelectorAll(".rotate-row").forEach((r) => r.remove());  // one at a time
    const minutes = el("input", {type: "number", min: 0, max: MAX_GRACE_MIN, step: 1, value: DEFAULT_GRACE_MIN,
      className: "grace", required: true});
    minutes.setAttribute("aria-label", "grace period in minutes");
    const go = el("button", {type: "submit", className: "small"}, "Rotate now");
    const cancel = el("button", {type: "button", className: "small", onclick: () => panel.remove()}, "Cancel");
    const rotateForm = el("form", {className: "rotate-form"},
      `Rotate ${key.name}: the old secret keeps working for `, minutes, " minutes (0: it stops now) ", go, " ", cancel);
    rotateForm.onsubmit = (event) => {
      event.preventDefault();
      attempt(go, async () => {
        say("", false);
        const graceMin = Number(minutes.value);
        if (!Number.isInteger(graceMin) || graceMin < 0 || graceMin > MAX_GRACE_MIN) {
          throw new Problem(`The grace period is a whole number of minutes from 0 to ${MAX_GRACE_MIN}.`);
        }
        const {value, ...rotated} = await call("POST", `/admin/keys/${encodeURIComponent(key.id)}/rotate`,
          {grace_s: graceMin * 60});
        showSecret(rotated, value);
        say(`Rotated ${rotated.name}` + (graceMin ? `; its old secret works until ${when(rotated.previous_expires_at)}.`
          : "; its old secret no longer works."), false);
        await reload();
      });
    };
    const panel = el("tr", {className: "rotate-row"}, el("td", {colSpan: 10}, rotateForm));
    row.after(panel);
    minutes.focus();
  }

  async function revokeKey(key, button) {
    if (!window.confirm(`Revoke the key ${key.name} (${key.id})? Its secret is refused from now on; this cannot be undone.`)) {
      return;
    }
    await attempt(button, async () => {
      say("", false);
      await call("DELETE", `/admin/keys/${encodeURIComponent(key.id)}`);
      if (shownFor === key.id) hideSecret();  // a revoked key's secret is of no use
      say(`Revoked ${key.name}.`, false);
      await reload();
    });
  }

  form.addEventListener("submit", create);
  $("key-secret-copy").addEventListener("click", copySecret);
  $("key-secret-dismiss").addEventListener("click", hideSecret);
  $("keys-show-revoked").addEventListener("change", () => attempt($("keys-refresh"), reload));
  $("keys-refresh").addEventListener("click", (event) => attempt(event.currentTarget, reload));
  attempt($("keys-refresh"), reload);
})();
