// The API Keys page: every action is a call to the admin router at /admin.
"use strict";

const api = async (method, path, body) => {
  const init = { method, headers: {}, credentials: "same-origin" };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch("/admin" + path, init);
  const data = await response.json().catch(() => ({}));
  if (!response.ok) {
    const message = data.error || `The server answered ${response.status}`;
    const error = new Error(data.hint ? `${message}. ${data.hint}` : message);
    error.code = data.code;
    throw error;
  }
  return data;
};

const $ = (id) => document.getElementById(id);

// A light check before the server's own: IPv4 or IPv6, with an optional prefix.
const ipv4 = /^(25[0-5]|2[0-4]\d|1?\d?\d)(\.(25[0-5]|2[0-4]\d|1?\d?\d)){3}(\/(3[0-2]|[12]?\d))?$/;
const ipv6 = /^[0-9a-fA-F:.]*:[0-9a-fA-F:.]*(\/(12[0-8]|1[01]\d|[1-9]?\d))?$/;
const parseIps = (text) => {
  const entries = text.split(",").map((s) => s.trim()).filter((s) => s.length > 0);
  const bad = entries.find((entry) => !ipv4.test(entry) && !ipv6.test(entry));
  return { entries, bad };
};

const showError = (input, element, message) => {
  element.textContent = message || "";
  element.hidden = !message;
  input.setAttribute("aria-invalid", message ? "true" : "false");
};

const when = (iso) => (iso ? new Date(iso).toLocaleString() : "Never");

// The scopes the API offers (GET /admin/scopes), as checkboxes in both forms.
let knownScopes = [];
const scopeBoxes = (fieldset, checked) => {
  const list = fieldset.querySelector(".scope-list");
  list.replaceChildren();
  for (const scope of knownScopes) {
    const label = document.createElement("label");
    label.className = "scope";
    const box = document.createElement("input");
    box.type = "checkbox";
    box.value = scope;
    box.checked = checked.includes(scope);
    label.append(box, " ", scope);
    list.append(label);
  }
};
const checkedScopes = (fieldset) =>
  [...fieldset.querySelectorAll("input[type=checkbox]:checked")].map((box) => box.value);
const loadScopes = async () => {
  try {
    knownScopes = (await api("GET", "/scopes")).scopes;
  } catch (error) {
    $("status").textContent = error.message;
  }
  scopeBoxes($("key-scopes"), []);
};

const render = (keys) => {
  const body = $("keys").querySelector("tbody");
  body.replaceChildren();
  $("empty").hidden = keys.length > 0;
  for (const key of keys) {
    const row = document.createElement("tr");
    row.dataset.id = key.id;
    row.className = key.status;
    const cells = [
      key.name,
      null,
      null,
      when(key.created_at),
      when(key.usage.last_used_at),
      key.allowed_ips.length ? key.allowed_ips.join(", ") : "Any address",
      key.scopes.length ? key.scopes.join(", ") : "All (unrestricted)",
      String(key.usage.requests),
    ];
    cells.forEach((text, i) => {
      const cell = document.createElement("td");
      if (i === 1) {
        const code = document.createElement("code");
        code.textContent = key.hint;
        cell.append(code);
        if (key.environment === "test") {
          const badge = document.createElement("span");
          badge.className = "badge test";
          badge.textContent = "Test";
          cell.append(badge);
        }
      } else if (i === 2) {
        const badge = document.createElement("span");
        badge.className = `badge ${key.status}`;
        badge.textContent = key.status === "active" ? "Active" : key.status === "revoked" ? "Revoked" : "Expired";
        cell.append(badge);
      } else {
        cell.textContent = text;
      }
      if (i === 5) cell.className = "ips";
      if (i === 6) cell.className = "scopes";
      row.append(cell);
    });
    const actions = document.createElement("td");
    const wrap = document.createElement("div");
    wrap.className = "row-actions";
    const history = document.createElement("button");
    history.type = "button";
    history.textContent = "History";
    history.setAttribute("aria-label", `History of ${key.name}`);
    history.addEventListener("click", () => openHistory(key));
    wrap.append(history);
    if (key.status === "active") {
      const edit = document.createElement("button");
      edit.type = "button";
      edit.textContent = "Edit";
      edit.setAttribute("aria-label", `Edit ${key.name}`);
      edit.addEventListener("click", () => openEdit(key));
      const revoke = document.createElement("button");
      revoke.type = "button";
      revoke.textContent = "Revoke";
      revoke.className = "danger";
      revoke.setAttribute("aria-label", `Revoke ${key.name}`);
      revoke.addEventListener("click", () => openRevoke(key));
      wrap.append(edit, revoke);
    }
    actions.append(wrap);
    row.append(actions);
    body.append(row);
  }
};

// Every key, a page at a time.
const refresh = async () => {
  try {
    const keys = [];
    let path = "/keys?limit=1000";
    for (;;) {
      const page = await api("GET", path);
      keys.push(...page.keys);
      if (!page.next) break;
      path = `/keys?limit=1000&after=${encodeURIComponent(page.next)}`;
    }
    render(keys);
  } catch (error) {
    $("status").textContent = error.message;
  }
};

// A form's name, IP restriction and scope fields, with their error lines.
const fieldsOf = (prefix) => ({
  name: $(`${prefix}-name`),
  nameError: $(`${prefix}-name-error`),
  ips: $(`${prefix}-ips`),
  ipsError: $(`${prefix}-ips-error`),
  scopes: $(`${prefix}-scopes`),
  scopesError: $(`${prefix}-scopes-error`),
});

// Clears old errors and checks the fields here first; the IP entries, or
// null after showing what is wrong.
const checkFields = (fields, emptyName) => {
  showError(fields.name, fields.nameError, "");
  showError(fields.ips, fields.ipsError, "");
  showError(fields.scopes, fields.scopesError, "");
  if (!fields.name.value.trim()) {
    showError(fields.name, fields.nameError, emptyName);
    fields.name.focus();
    return null;
  }
  const { entries, bad } = parseIps(fields.ips.value);
  if (bad) {
    showError(fields.ips, fields.ipsError, `“${bad}” is not an IP address or CIDR range (e.g. 203.0.113.7 or 10.0.0.0/8).`);
    fields.ips.focus();
    return null;
  }
  return entries;
};

// The server's refusal, shown beside the field it is about.
const showServerError = (fields, error) => {
  if (error.code === "invalid_ip_restriction" || error.code === "too_many_ip_restrictions") {
    showError(fields.ips, fields.ipsError, error.message);
  } else if (error.code === "invalid_scope" || error.code === "unknown_scope") {
    showError(fields.scopes, fields.scopesError, error.message);
  } else if (error.code === "too_many_keys") {
    $("status").textContent = error.message;
  } else {
    showError(fields.name, fields.nameError, error.message);
  }
};

$("create-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = fieldsOf("key");
  const entries = checkFields(fields, "Give the key a name that says where it is used.");
  if (entries === null) return;
  try {
    const created = await api("POST", "/keys", {
      name: fields.name.value.trim(),
      environment: $("key-environment").value,
      allowed_ips: entries,
      scopes: checkedScopes(fields.scopes),
    });
    $("new-key").value = created.key;
    $("copy-status").textContent = "";
    $("new-key-panel").hidden = false;
    $("new-key").focus();
    $("new-key").select();
    event.target.reset();
    scopeBoxes($("key-scopes"), []);
    $("status").textContent = `Created “${created.record.name}”.`;
    await refresh();
  } catch (error) {
    showServerError(fields, error);
  }
});

$("copy-key").addEventListener("click", async () => {
  const field = $("new-key");
  try {
    await navigator.clipboard.writeText(field.value);
  } catch {
    field.select();
    document.execCommand("copy");
  }
  $("copy-status").textContent = "Copied to the clipboard.";
});

$("dismiss-key").addEventListener("click", () => {
  $("new-key").value = "";
  $("new-key-panel").hidden = true;
});

let editing = null;
const openEdit = (key) => {
  editing = key;
  $("edit-name").value = key.name;
  $("edit-ips").value = key.allowed_ips.join(", ");
  scopeBoxes($("edit-scopes"), key.scopes);
  showError($("edit-name"), $("edit-name-error"), "");
  showError($("edit-ips"), $("edit-ips-error"), "");
  showError($("edit-scopes"), $("edit-scopes-error"), "");
  $("edit-dialog").showModal();
  $("edit-name").focus();
};
$("edit-cancel").addEventListener("click", () => $("edit-dialog").close());
$("edit-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = fieldsOf("edit");
  const entries = checkFields(fields, "A key needs a name.");
  if (entries === null) return;
  try {
    await api("PATCH", `/keys/${editing.id}`, {
      name: fields.name.value.trim(),
      allowed_ips: entries,
      scopes: checkedScopes(fields.scopes),
    });
    $("edit-dialog").close();
    $("status").textContent = "Changes saved.";
    await refresh();
  } catch (error) {
    showServerError(fields, error);
  }
});

// A key's history: every event about it, a page at a time.
const FIELD_NAMES = {
  name: "name",
  allowed_ips: "IP restrictions",
  scopes: "scopes",
  rate_limit: "rate limit",
  expires_at: "expiry",
  status: "status",
};
const ACTION_NAMES = { create: "Created", update: "Edited", rotate: "Rotated", revoke: "Revoked" };
const describeChange = (change, created) => {
  const show = (items, field) => {
    if (field === "expires_at") return items.length ? new Date(Number(items[0])).toLocaleString() : "never";
    if (items.length) return items.join(", ");
    if (field === "scopes") return "all (unrestricted)";
    if (field === "allowed_ips") return "any address";
    return "none";
  };
  const field = FIELD_NAMES[change.field] || change.field;
  if (created) return `${field}: ${show(change.after, change.field)}`;
  return `${field}: ${show(change.before, change.field)} → ${show(change.after, change.field)}`;
};
const openHistory = async (key) => {
  $("history-name").textContent = key.name;
  const body = $("history").querySelector("tbody");
  body.replaceChildren();
  $("history-status").textContent = "Loading…";
  $("history-dialog").showModal();
  try {
    const events = [];
    let path = `/audit?limit=1000&key=${encodeURIComponent(key.id)}`;
    for (;;) {
      const page = await api("GET", path);
      events.push(...page.events);
      if (page.next === null || page.next === undefined) break;
      path = `/audit?limit=1000&key=${encodeURIComponent(key.id)}&after=${page.next}`;
    }
    for (const event of events) {
      const row = document.createElement("tr");
      row.className = `event ${event.action} ${event.outcome}`;
      let action = ACTION_NAMES[event.action] || event.action;
      if (event.action === "rotate" && event.new_key_id === key.id) action = "Created by rotation";
      if (event.outcome === "refused") action = `${action}: refused (${event.reason})`;
      const created = event.action === "create";
      const changes = event.changes.map((change) => describeChange(change, created)).join("; ");
      for (const text of [new Date(event.at_ms).toLocaleString(), action, event.actor || "—", event.client_ip || "—", changes || "—"]) {
        const cell = document.createElement("td");
        cell.textContent = text;
        row.append(cell);
      }
      body.append(row);
    }
    $("history-status").textContent = events.length ? "" : "No recorded changes.";
  } catch (error) {
    $("history-status").textContent = error.message;
  }
};

let revoking = null;
const openRevoke = (key) => {
  revoking = key;
  $("revoke-name").textContent = key.name;
  $("revoke-dialog").showModal();
  $("revoke-cancel").focus();
};
$("revoke-cancel").addEventListener("click", () => $("revoke-dialog").close());
$("revoke-confirm").addEventListener("click", async () => {
  try {
    await api("POST", `/keys/${revoking.id}/revoke`, {});
    $("status").textContent = `Revoked “${revoking.name}”.`;
  } catch (error) {
    $("status").textContent = error.message;
  }
  $("revoke-dialog").close();
  await refresh();
});

for (const origin of document.querySelectorAll(".origin")) origin.textContent = window.location.origin;
loadScopes().then(refresh);
