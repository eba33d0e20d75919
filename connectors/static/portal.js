// Renkei portal demo page: plain fetch() against /api; no personal data in the URL or in storage.
"use strict";

const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const res = await fetch(path, {
    method, credentials: "same-origin",
    headers: body ? { "Content-Type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  let data = {};
  try { data = await res.json(); } catch (e) { /* empty body */ }
  return { status: res.status, data };
}

function say(id, text, isError) {
  const el = $(id);
  el.textContent = text;
  el.className = isError ? "error" : "";
}

function showApp(cardId) {
  $("login-section").hidden = true;
  $("app-section").hidden = false;
  $("who").textContent = cardId;
  loadRecords();
}

async function follow(requestId, statusId) {
  for (let i = 0; i < 120; i++) {
    const { status, data } = await api("GET", `/api/requests/${requestId}`);
    if (status !== 200) { say(statusId, data.message || "request lost", true); return; }
    say(statusId, `${data.kind}: ${data.status}${data.detail ? " — " + data.detail : ""}`,
        data.status.startsWith("REJECTED"));
    if (data.status !== "SENT") { loadRecords(); return; }
    await new Promise((r) => setTimeout(r, 500));
  }
}

async function loadRecords() {
  const { status, data } = await api("GET", "/api/records");
  if (status !== 200) { say("chain-status", data.message || "records unavailable", true); return; }
  // Verified against the latest signed checkpoint: OK, PENDING (newest records not yet checkpointed) or TAMPERED.
  const against = data.checkpoint ? ` against checkpoint #${data.checkpoint.number}` : "";
  const verdicts = {
    OK: `Chain verified${against} (${data.records.length} records)`,
    PENDING: `Chain verified${against}; ${data.pending} record(s) not yet checkpointed`,
    TAMPERED: `Records TAMPERED: ${data.problems.join("; ")}`,
  };
  say("chain-status", verdicts[data.verdict] || data.verdict, !data.chain_ok);
  const body = $("records").querySelector("tbody");
  body.replaceChildren();
  const marks = { CHECKPOINTED: ["✔", "verified record"], PENDING: ["…", "verified pending record"] };
  for (const r of data.records) {
    const tr = document.createElement("tr");
    const [mark, cls] = marks[r.state] || ["✘", "broken record"];
    tr.className = cls;
    tr.title = r.state === "PENDING" ? "not yet checkpointed" : r.state.toLowerCase();
    const purpose = r.procedure ? `${r.procedure.name_ja || r.procedure.code}${r.procedure.purpose_ja ? " — " + r.procedure.purpose_ja : ""}` : "";
    for (const v of [mark, r.requested_at, r.requester, r.provider, r.data_item, r.legal_basis, purpose, r.status]) {
      const td = document.createElement("td");
      td.textContent = v;
      tr.appendChild(td);
    }
    tr.firstChild.className = "check";
    body.appendChild(tr);
  }
}

document.addEventListener("DOMContentLoaded", async () => {
  const me = await api("GET", "/api/me");
  if (me.status === 200) showApp(me.data.card_id);

  $("login-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const { status, data } = await api("POST", "/api/login", { card_id: $("card-id").value, pin: $("pin").value });
    if (status === 200) { say("login-message", ""); showApp(data.card_id); return; }
    say("login-message", data.reason === "WRONG_PIN" && data.tries_left !== undefined
      ? `Wrong PIN: ${data.tries_left} tries left` : (data.message || "login failed"), true);
  });

  $("logout-button").addEventListener("click", async () => {
    await api("POST", "/api/logout");
    location.reload();
  });

  $("account-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const operation = $("operation").value;
    const body = { operation };
    if (operation !== "DELETE") {
      body.account = {
        bank_code: $("bank-code").value, branch_code: $("branch-code").value,
        account_type: $("account-type").value, account_number: $("account-number").value,
        holder_kana: $("holder-kana").value,
      };
    }
    const { status, data } = await api("POST", "/api/account", body);
    if (status !== 202) { say("account-status", `${data.reason}: ${data.message}`, true); return; }
    say("account-status", "SENT");
    follow(data.request_id, "account-status");
  });

  $("numbering-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const codes = $("numbering-banks").value.split(/\s+/).filter((c) => c);
    const { status, data } = await api("POST", "/api/numbering", { bank_codes: codes });
    if (status !== 202) { say("numbering-status", `${data.reason}: ${data.message}`, true); return; }
    say("numbering-status", "SENT");
    follow(data.request_id, "numbering-status");
  });

  $("records-button").addEventListener("click", loadRecords);
});
