// Renkei portal page: plain fetch() against /api, in Japanese first and English second.
// No personal data in URLs or browser storage (only the chosen language is remembered).
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 4000;
const state = {
  lang: "ja", messages: null, csrf: null, me: null, banks: [], notices: [], unread: 0, records: null,
  recordsError: null, requests: [], followed: new Set(), timer: null, seenNotices: null, said: {},
};

// ---------------------------------------------------------------- words
function t(key, params) {
  const table = state.messages ? state.messages[state.lang] : {};
  let text = table[key] !== undefined ? table[key] : key;
  for (const [name, value] of Object.entries(params || {})) text = text.split(`{${name}}`).join(String(value));
  return text;
}
const has = (key) => Boolean(state.messages && state.messages[state.lang][key] !== undefined);
const nameOf = (names) => (names ? names[state.lang] || names.en : "");

function reasonText(code, fallback) {
  if (!code) return fallback || "";
  if (code.startsWith("REJECTED:")) code = code.slice(9);
  if (has(`status.${code}`)) return t(`status.${code}`);
  if (has(`reason.${code}`)) return t(`reason.${code}`);
  return fallback || code;
}

function problemText(data) {
  if (data && data.reason === "INVALID_FIELD" && data.field && has(`field.${data.field}`)) return t(`field.${data.field}`);
  return reasonText(data && data.reason, t("error.network"));
}

const DATE = { ja: "ja-JP", en: "en-GB" };
function when(iso) {
  if (!iso) return "";
  const options = { dateStyle: "long", timeStyle: "short", timeZone: "Asia/Tokyo" };
  const text = new Intl.DateTimeFormat(DATE[state.lang], options).format(new Date(iso));
  return state.lang === "en" ? `${text} JST` : text;
}

function applyLanguage() {
  document.documentElement.lang = state.lang;
  for (const el of document.querySelectorAll("[data-i18n]")) el.textContent = t(el.dataset.i18n);
  for (const el of document.querySelectorAll("[data-i18n-aria]")) el.setAttribute("aria-label", t(el.dataset.i18nAria));
  for (const b of document.querySelectorAll("button.lang")) b.setAttribute("aria-pressed", String(b.dataset.lang === state.lang));
  document.title = t("title");
  for (const [id, [words, kind]] of Object.entries(state.said)) show(id, words(), kind);
  renderAll();
}

function setLanguage(lang) {
  state.lang = lang === "en" ? "en" : "ja";
  try { localStorage.setItem("renkei.lang", state.lang); } catch (e) { /* storage off: the choice lasts this page */ }
  applyLanguage();
}

// ---------------------------------------------------------------- the API
async function api(method, path, body) {
  const headers = {};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (method !== "GET" && state.csrf) headers["X-CSRF-Token"] = state.csrf;
  let res;
  try {
    res = await fetch(path, { method, credentials: "same-origin", headers,
                              body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (e) {
    return { status: 0, data: { reason: null } };
  }
  let data = {};
  try { data = await res.json(); } catch (e) { /* an empty body */ }
  if (res.status === 401 && path !== "/api/login") loggedOut(true);
  return { status: res.status, data };
}

// A message is kept as a function of the language, so switching language says it again in the new one.
function say(id, words, kind) {
  state.said[id] = [words, kind];
  show(id, words(), kind);
}

function show(id, text, kind) {
  const el = $(id);
  el.textContent = text;
  el.className = `message${kind ? " " + kind : ""}`;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

// ---------------------------------------------------------------- logging in and out
function loggedOut(ended) {
  if (state.timer) { clearInterval(state.timer); state.timer = null; }
  const wasIn = state.me !== null;
  state.me = null; state.csrf = null; state.seenNotices = null;
  $("app-section").hidden = true;
  $("login-section").hidden = false;
  if (ended && wasIn) say("login-message", () => t("login.session_ended"), "error");
}

async function showApp(me) {
  state.me = me;
  state.csrf = me.csrf_token;
  $("login-section").hidden = true;
  $("app-section").hidden = false;
  $("who").textContent = me.card_id;
  const banks = await api("GET", "/api/banks");
  if (banks.status === 200) state.banks = banks.data.banks;
  renderBanks();
  renderAccount();
  await Promise.all([loadRequests(), loadNotices(), loadRecords()]);
  state.timer = setInterval(poll, POLL_MS);
}

async function refreshMe() {
  const me = await api("GET", "/api/me");
  if (me.status !== 200) return;
  state.me = me.data;
  state.csrf = me.data.csrf_token;
  renderAccount();
}

async function poll() {
  if (!state.me) return;
  await Promise.all([refreshMe(), loadNotices(), state.followed.size ? loadRequests() : null]);
}

// ---------------------------------------------------------------- the registered account
function accountText(a) {
  return `${nameOf(a.bank_name)} ${t("account.branch_value", { code: a.branch_code })} ${t(`type.${a.account_type}`)} ****${a.number_last_digits} ${a.holder_kana}`;
}

function renderAccount() {
  const box = $("account-card");
  box.replaceChildren();
  const a = state.me && state.me.account;
  if (!a) { box.append(el("p", {}, t("account.none"))); return; }
  const rows = [
    ["account.bank", `${nameOf(a.bank_name)} (${a.bank_code})`],
    ["account.branch", t("account.branch_value", { code: a.branch_code })],
    ["account.type", t(`type.${a.account_type}`)],
    ["account.number", el("span", { class: "number" }, `****${a.number_last_digits}`)],
    ["account.holder", a.holder_kana],
    ["account.since", when(a.since)],
  ];
  if (a.filed_by_name) rows.push(["account.filed_by", nameOf(a.filed_by_name)]);
  const dl = el("dl", { id: "account-details" });
  for (const [key, value] of rows) dl.append(el("dt", {}, t(key)), el("dd", {}, value));
  box.append(dl);
}

function renderBanks() {
  const select = $("bank-code");
  const chosen = select.value;
  select.replaceChildren();
  const choices = $("numbering-banks");
  const ticked = new Set([...choices.querySelectorAll("input:checked")].map((i) => i.value));
  choices.replaceChildren();
  for (const b of state.banks) {
    select.append(el("option", { value: b.bank_code }, `${nameOf(b.name)} (${b.bank_code})`));
    const box = el("input", { type: "checkbox", name: "bank_codes", value: b.bank_code, id: `numbering-${b.bank_code}` });
    box.checked = ticked.has(b.bank_code);
    choices.append(el("label", { for: `numbering-${b.bank_code}` }, box, ` ${nameOf(b.name)} (${b.bank_code})`));
  }
  if (chosen) select.value = chosen;
}

// ---------------------------------------------------------------- requests and their answers
function requestLine(r) {
  const kind = t(`kind.${r.kind}`);
  const line = el("li", { "data-request": r.request_id },
    el("span", { class: `state ${r.state}` }, t(`state.${r.state}`)), ` ${kind}`);
  const details = [];
  if (r.state === "CONFIRMED") details.push(t("status.DONE"));
  if (r.state === "REFUSED") details.push(t("request.reason", { reason: reasonText(r.status, r.detail) }));
  if (r.banks) {
    for (const [code, status] of Object.entries(r.banks)) {
      const bank = state.banks.find((b) => b.bank_code === code);
      details.push(t("numbering.bank_line", { bank: bank ? nameOf(bank.name) : code,
                                              status: status ? reasonText(status) : t("status.waiting") }));
    }
  }
  details.push(t("request.filed", { when: when(r.created_at) }));
  line.append(el("p", { class: "meta" }, details.join(" / ")));
  return line;
}

function statusText(r) {
  if (r.state === "PENDING") return [r.kind === "numbering" ? t("state.numbering_sent") : t("state.sent"), "pending"];
  if (r.state === "CONFIRMED") return [`${t(`kind.${r.kind}`)}: ${t("status.DONE")}`, "ok"];
  if (r.state === "ANSWERED") {
    const parts = Object.entries(r.banks || {}).map(([code, s]) => {
      const bank = state.banks.find((b) => b.bank_code === code);
      return t("numbering.bank_line", { bank: bank ? nameOf(bank.name) : code, status: reasonText(s) });
    });
    return [parts.join(" / "), "ok"];
  }
  return [`${t(`kind.${r.kind}`)}: ${t("state.REFUSED")} — ${reasonText(r.status, r.detail)}`, "error"];
}

async function loadRequests() {
  const { status, data } = await api("GET", "/api/requests");
  if (status !== 200) return;
  state.requests = data.requests;
  renderRequests();
  for (const r of state.requests) {
    if (!state.followed.has(r.request_id) || r.state === "PENDING") continue;
    state.followed.delete(r.request_id);  // answered: say it where the person is looking, then refresh the rest
    say(r.kind === "numbering" ? "numbering-status" : "account-status", () => statusText(r)[0], statusText(r)[1]);
    refreshMe();
    loadRecords();
  }
}

function renderRequests() {
  const list = $("requests");
  list.replaceChildren();
  if (!state.requests.length) { list.append(el("li", {}, t("requests.none"))); return; }
  for (const r of state.requests) list.append(requestLine(r));
}

// ---------------------------------------------------------------- notices
function noticeTitle(n) {
  if (n.kind === "REGISTRATION") {
    const done = n.status === "DONE";
    return t(`notice.REGISTRATION.${n.event}.${done ? "DONE" : "refused"}`);
  }
  if (n.kind === "PROVISION") return t("notice.PROVISION", { party: nameOf(n.party_name) });
  if (n.kind === "LOOKUP") return n.status === "SUPPLEMENT" ? t("notice.LOOKUP.SUPPLEMENT") : t(`notice.LOOKUP.${n.event}`);
  if (n.kind === "NUMBERING") return t("notice.NUMBERING");
  return n.kind;
}

function noticeLines(n) {
  const lines = [];
  if (n.kind === "REGISTRATION") {
    if (n.status !== "DONE") lines.push(t("notice.reason", { reason: reasonText(n.status, n.detail) }));
    if (n.party_name) lines.push(t("notice.filed_by", { party: nameOf(n.party_name) }));
  }
  if (n.kind === "PROVISION") {
    if (n.procedure_code) lines.push(t("notice.procedure", { procedure: n.procedure_code }));
    if (n.purpose) lines.push(t("notice.purpose", { purpose: n.purpose }));
  }
  if (n.account) lines.push(t("notice.account", { account: accountText(n.account) }));
  if (n.kind === "LOOKUP") {
    lines.push(n.banks.length ? t("notice.banks", { banks: n.banks.map((b) => nameOf(b.name)).join("、") })
                              : t("notice.no_banks"));
  }
  if (n.kind === "NUMBERING") {
    if (n.banks.length) lines.push(t("notice.numbered", { banks: n.banks.map((b) => nameOf(b.name)).join("、") }));
    if (n.banks_not_answered && n.banks_not_answered.length) {
      lines.push(t("notice.unanswered", { banks: n.banks_not_answered.join("、") }));
    }
  }
  return lines;
}

async function loadNotices() {
  const { status, data } = await api("GET", "/api/notices");
  if (status !== 200) return;
  const ids = new Set(data.notices.map((n) => n.id));
  if (state.seenNotices !== null) {
    const fresh = [...ids].filter((id) => !state.seenNotices.has(id)).length;
    if (fresh) {
      $("notices-live").textContent = t("notices.arrived", { n: fresh });
      loadRecords();  // a notice often comes with a new provision record
    }
  }
  state.seenNotices = ids;
  state.notices = data.notices;
  state.unread = data.unread;
  renderNotices();
}

function renderNotices() {
  const list = $("notices");
  list.replaceChildren();
  const badge = $("unread-badge");
  badge.hidden = !state.unread;
  badge.textContent = t("notices.unread", { n: state.unread });
  $("notices-read").hidden = !state.unread;
  if (!state.notices.length) { list.append(el("li", {}, t("notices.none"))); return; }
  for (const n of state.notices) {
    const item = el("li", { class: `notice ${n.kind}${n.read ? "" : " unread"}`, "data-kind": n.kind });
    const title = el("p", { class: "title" }, noticeTitle(n));
    if (!n.read) title.prepend(el("span", { class: "badge" }, t("notices.new")), " ");
    item.append(title, el("p", { class: "meta" }, when(n.occurred_at)));
    const lines = noticeLines(n);
    if (lines.length) item.append(el("ul", { class: "lines" }, ...lines.map((l) => el("li", {}, l))));
    list.append(item);
  }
}

// ---------------------------------------------------------------- provision records
async function loadRecords() {
  const { status, data } = await api("GET", "/api/records");
  if (status !== 200) { state.records = null; state.recordsError = data; renderRecords(); return; }
  state.records = data;
  state.recordsError = null;
  renderRecords();
}

function renderRecords() {
  const verdict = $("chain-status");
  const body = $("records").querySelector("tbody");
  body.replaceChildren();
  if (!state.records) {
    if (state.recordsError) {
      verdict.textContent = t("records.unavailable", { reason: problemText(state.recordsError) });
      verdict.className = "verdict bad";
    }
    return;
  }
  const data = state.records;
  const n = data.verdict === "OK" ? (data.checkpoint ? data.checkpoint.number : 0) : data.pending;
  verdict.textContent = t(`records.verdict.${data.verdict}`, { n });
  verdict.className = `verdict ${data.chain_ok ? "ok" : "bad"}`;
  verdict.dataset.verdict = data.verdict;
  if (!data.records.length) {
    body.append(el("tr", {}, el("td", { colspan: "7" }, t("records.none"))));
    return;
  }
  const marks = { CHECKPOINTED: "verified", PENDING: "pending" };
  const columns = ["when", "requester", "provider", "item", "procedure", "status", "check"];
  for (const r of [...data.records].reverse()) {
    const cls = marks[r.state] || "broken";
    // The legal basis always; the procedure and its purpose when the record names them.
    const basis = has(`basis.${r.legal_basis}`) ? t(`basis.${r.legal_basis}`) : r.legal_basis;
    // r.procedure: the catalogue's entry for the procedure the exchange served (infra/domain/procedures.toml), or null.
    const p = r.procedure;
    const procedure = p ? [nameOf({ ja: p.name_ja, en: p.name_en }) || p.code,
                           nameOf({ ja: p.purpose_ja, en: p.purpose_en })].filter(Boolean).join(" / ") : "";
    const cells = [
      when(r.provided_at || r.requested_at), nameOf(r.requester_name) || r.requester,
      nameOf(r.provider_name) || r.provider, has(`item.${r.data_item}`) ? t(`item.${r.data_item}`) : r.data_item,
      procedure ? `${basis} — ${procedure}` : basis,
      has(`records.status.${r.status}`) ? t(`records.status.${r.status}`) : r.status,
      t(`records.state.${r.state}`),
    ];
    const tr = el("tr", { class: `record ${cls}`, "data-state": r.state });
    cells.forEach((value, i) => tr.append(el("td", { class: columns[i], "data-label": t(`records.col.${columns[i]}`) }, value)));
    body.append(tr);
  }
}

function renderAll() {
  if (!state.me) return;
  renderBanks();
  renderAccount();
  renderRequests();
  renderNotices();
  renderRecords();
}

// ---------------------------------------------------------------- forms
function operation() {
  return document.querySelector("input[name=operation]:checked").value;
}

function showOperation() {
  const del = operation() === "DELETE";
  $("account-fields").hidden = del;
  $("delete-hint").hidden = !del;
}

async function submitting(button, work) {
  button.disabled = true;
  try { await work(); } finally { button.disabled = false; }
}

document.addEventListener("DOMContentLoaded", async () => {
  let chosen = new URLSearchParams(location.search).get("lang");
  try { chosen = chosen || localStorage.getItem("renkei.lang"); } catch (e) { /* no storage */ }
  state.lang = chosen === "en" ? "en" : "ja";
  try {
    state.messages = await (await fetch("/static/portal-i18n.json")).json();
  } catch (e) {
    state.messages = { ja: {}, en: {} };
  }
  applyLanguage();
  for (const b of document.querySelectorAll("button.lang")) b.addEventListener("click", () => setLanguage(b.dataset.lang));

  const me = await api("GET", "/api/me");
  if (me.status === 200) await showApp(me.data);

  $("login-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting($("login-button"), async () => {
      const { status, data } = await api("POST", "/api/login", { card_id: $("card-id").value.trim(), pin: $("pin").value });
      $("pin").value = "";
      if (status === 200) {
        say("login-message", () => "");
        const fresh = await api("GET", "/api/me");
        if (fresh.status === 200) { await showApp(fresh.data); $("main").focus(); }
        return;
      }
      const words = () => {
        if (data.reason === "WRONG_PIN" && data.tries_left !== undefined) return t("login.tries_left", { n: data.tries_left });
        if (data.reason === "CARD_LOCKED") return t("login.locked");
        if (data.reason === "CARD_SUSPENDED") return t("login.suspended");
        if (data.reason === "RATE_LIMITED") return t("login.throttled", { n: data.retry_after_s });
        return problemText(data);
      };
      say("login-message", words, "error");
      $("pin").focus();
    });
  });

  $("logout-button").addEventListener("click", async () => {
    await api("POST", "/api/logout");
    loggedOut(false);
    say("login-message", () => "");
  });

  for (const radio of document.querySelectorAll("input[name=operation]")) radio.addEventListener("change", showOperation);

  $("account-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting($("account-button"), async () => {
      const body = { operation: operation() };
      if (body.operation !== "DELETE") {
        body.account = {
          bank_code: $("bank-code").value, branch_code: $("branch-code").value.trim(),
          account_type: $("account-type").value, account_number: $("account-number").value.trim(),
          holder_kana: $("holder-kana").value.trim(),
        };
      }
      const { status, data } = await api("POST", "/api/account", body);
      if (status !== 202) { say("account-status", () => problemText(data), "error"); return; }
      say("account-status", () => t("state.sent"), "pending");
      state.followed.add(data.request_id);
      await loadRequests();
    });
  });

  $("numbering-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    submitting($("numbering-button"), async () => {
      const codes = [...document.querySelectorAll("#numbering-banks input:checked")].map((i) => i.value);
      const { status, data } = await api("POST", "/api/numbering", { bank_codes: codes });
      if (status !== 202) { say("numbering-status", () => problemText(data), "error"); return; }
      say("numbering-status", () => t("state.numbering_sent"), "pending");
      state.followed.add(data.request_id);
      await loadRequests();
    });
  });

  $("notices-read").addEventListener("click", async () => {
    await api("POST", "/api/notices/read", {});
    await loadNotices();
  });
  $("records-button").addEventListener("click", loadRecords);
});
