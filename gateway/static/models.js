// digitflow models page: the registry's models, their versions and aliases, the candidate in
// release with its live numbers (GET /v1/models/<name>/canary); with the admin token, promotion,
// rollback, and promoting or aborting the candidate (POST .../promote | rollback | canary/*).
"use strict";

const TOKEN_KEY = "digitflow-admin-token";
const ALIAS_CLASS = { production: "prod", candidate: "candidate" };

const adminToken = () => sessionStorage.getItem(TOKEN_KEY) ?? "";
let busy = false;

// ---------------------------------------------------------------- rendering

function versionCreated(record) {
  if (record.registered_at) return formatDateTime(record.registered_at);
  const parsed = Date.parse(record.created_at ?? "");
  return Number.isNaN(parsed) ? "–" : formatDateTime(parsed / 1000);
}

function aliasBadges(aliases, version) {
  return Object.entries(aliases)
    .filter(([, v]) => String(v) === version)
    .map(([alias]) => h("span", { className: `badge ${ALIAS_CLASS[alias] ?? "neutral"}` }, alias));
}

function accuracyCell(record) {
  const accuracy = record.metrics?.heldout_accuracy;
  if (accuracy === undefined || accuracy === null) return h("td", { className: "num muted", "data-label": "Held-out accuracy" }, "–");
  const n = record.metrics?.n_heldout;
  return h("td", { className: "num", "data-label": "Held-out accuracy" },
    h("strong", {}, formatPct(accuracy)),
    n ? h("span", { className: "meta held-out-n" }, `on ${Math.round(n).toLocaleString()}`) : null);
}

function versionRow(name, record, aliases, production) {
  const version = String(record.version);
  const isProduction = version === production;
  const badges = aliasBadges(aliases, version);
  const trained = [record.dataset, record.epochs ? `${record.epochs} epochs` : null, record.architecture].filter(Boolean);
  const row = h("tr", { className: isProduction ? "is-production" : "", "data-version": version },
    h("th", { scope: "row", "data-label": "Version" }, `v${version}`),
    h("td", { "data-label": "Created", title: record.created_at ? `trained ${record.created_at}` : null }, versionCreated(record)),
    accuracyCell(record),
    h("td", { "data-label": "Aliases", className: "aliases" }, badges.length ? badges : h("span", { className: "meta" }, "–")),
    h("td", { "data-label": "Trained on", className: "meta" }, trained.join(" · ") || "–"),
  );
  if (adminToken()) {
    const cell = h("td", { className: "version-actions", "data-label": "Action" });
    if (isProduction) cell.append(h("span", { className: "meta" }, "serving"));
    else {
      const button = h("button", {
        type: "button", className: "button secondary small admin-action", "aria-label": `Promote ${name} v${version} to production`,
      }, "Promote");
      button.addEventListener("click", () =>
        act(`/v1/models/${encodeURIComponent(name)}/promote`, { version: Number(version) }, `Promoting ${name} v${version}…`));
      cell.append(button);
    }
    row.append(cell);
  }
  return row;
}

const fmtNum = (v, pct = true) => (v === null || v === undefined ? "–" : pct ? formatPct(v) : String(v));
const SIGNALS = [
  ["jobs", "Jobs", false], ["labelled", "Labelled", false], ["accuracy", "Accuracy (feedback)", true],
  ["estimated_accuracy", "Estimated accuracy", true], ["outlier_rate", "Outlier rate", true], ["failure_rate", "Failure rate", true],
];

function canaryPanel(name, canary) {
  const share = canary.mode === "canary" ? ` · ${formatPct(canary.share)} of live jobs` : " · shadow: answers logged, not returned";
  const panel = h("div", { className: "canary", "data-canary": String(canary.version), "data-decision": canary.decision ?? "pending" },
    h("h3", {}, `Candidate v${canary.version}`, " ", h("span", { className: "badge candidate" }, canary.mode)),
    h("p", { className: "meta" }, `since ${formatDateTime(canary.since)}${share} · started by ${canary.by ?? "–"}`));
  const numbers = canary.numbers;
  if (numbers) {
    panel.append(h("p", { className: "canary-decision" },
      h("strong", {}, canary.decision ?? "pending"), `: ${canary.reason ?? ""} (needs ${canary.min_jobs} jobs, margin ${canary.margin})`));
    panel.append(h("div", { className: "table-wrap" }, h("table", { className: "data-table canary-numbers" },
      h("caption", { className: "visually-hidden" }, `Candidate v${canary.version} against production v${canary.production}`),
      h("thead", {}, h("tr", {}, ["Signal", `Candidate v${canary.version}`, `Production v${canary.production}`].map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, SIGNALS.map(([key, label, pct]) => h("tr", { "data-signal": key },
        h("th", { scope: "row" }, label),
        h("td", { className: "num" }, fmtNum(numbers.candidate?.[key], pct)),
        h("td", { className: "num" }, fmtNum(numbers.production?.[key], pct))))))));
  } else panel.append(h("p", { className: "meta" }, "No numbers yet: the monitor has not evaluated this release."));
  const suites = canary.suites;
  panel.append(h("p", { className: "meta canary-suites" }, suites
    ? `Evaluation suites: ${suites.passed ? "passed" : "failed"} (${suites.reason}) · ` +
      Object.entries(suites.suites ?? {}).map(([k, v]) => `${k} ${formatPct(v.candidate)} vs ${formatPct(v.production)}`).join(" · ")
    : "Evaluation suites: none recorded (started by hand): promote or abort it here."));
  if (adminToken()) {
    const base = `/v1/models/${encodeURIComponent(name)}/canary`;
    const promote = h("button", { type: "button", className: "button secondary small admin-action" }, "Promote candidate");
    promote.addEventListener("click", () => act(`${base}/promote`, null, `Promoting candidate v${canary.version}…`));
    const abort = h("button", { type: "button", className: "button secondary small admin-action" }, "Abort");
    abort.addEventListener("click", () => act(`${base}/abort`, { reason: "aborted on the models page" }, `Aborting candidate v${canary.version}…`));
    panel.append(h("div", { className: "canary-actions" }, promote, " ", abort));
  }
  return panel;
}

function releaseNote(releases) {
  const last = releases?.at(-1);
  return last ? `last release: v${last.version} ${last.outcome} (${last.reason})` : null;
}

function modelCard(summary, detail, canaryView) {
  const name = summary.name;
  const entry = detail.ok ? detail.body : null;
  const production = entry?.production ?? summary.production ?? null;
  const aliases = entry?.aliases ?? summary.aliases ?? {};
  const versions = entry?.versions ?? [];
  const history = entry?.history ?? [];
  const record = versions.find((v) => String(v.version) === production) ?? versions.at(-1) ?? {};
  const facts = [
    record.input_profile ?? summary.input_profile,
    (record.labels ?? summary.labels)?.length ? `${(record.labels ?? summary.labels).length} classes` : null,
    `${versions.length} version${versions.length === 1 ? "" : "s"}`,
  ].filter(Boolean);

  const title = h("div", { className: "model-title" },
    h("h2", { id: `model-${name}` }, name),
    production
      ? h("span", { className: "badge prod" }, `production v${production}`)
      : h("span", { className: "badge neutral" }, "no production version"));
  const head = h("div", { className: "model-head" }, h("div", {}, title, h("p", { className: "meta" }, facts.join(" · "))));
  if (adminToken() && entry) {
    // The registry keeps the production history: rollback goes to the entry before the current one.
    const previous = history.length > 1 && history.at(-1) === production ? history.at(-2) : undefined;
    const button = h("button", {
      type: "button", className: "button secondary admin-action",
      "aria-label": `Roll back ${name} to the previous production version`,
      title: previous ? `Production goes back to v${previous}` : "No earlier production version to go back to",
      "data-unavailable": previous ? null : "true",
    }, previous ? `Roll back to v${previous}` : "Roll back");
    button.addEventListener("click", () => act(`/v1/models/${encodeURIComponent(name)}/rollback`, null, `Rolling back ${name}…`));
    head.append(button);
  }

  const card = h("section", { className: "card model-card", "aria-labelledby": `model-${name}`, "data-model": name }, head);
  if (!entry) {
    card.append(h("p", { className: "meta" }, detail.status === 404
      ? "Not in the registry yet: the registry service has not registered this model."
      : `Could not read this model (${detail.error?.code}): ${detail.error?.message}`));
    return card;
  }
  const headings = ["Version", "Created", "Held-out accuracy", "Aliases", "Trained on"];
  if (adminToken()) headings.push("Action");
  card.append(h("div", { className: "table-wrap" },
    h("table", { className: "data-table versions stack-on-phone" },
      h("caption", { className: "visually-hidden" }, `Versions of ${name}`),
      h("thead", {}, h("tr", {}, headings.map((t) => h("th", { scope: "col" }, t)))),
      h("tbody", {}, [...versions].reverse().map((v) => versionRow(name, v, aliases, production))))));

  const canary = canaryView?.ok ? canaryView.body.canary : entry.canary;
  if (canary) card.append(canaryPanel(name, canary));
  const notes = [];
  const release = releaseNote(entry.releases);
  if (release) notes.push(release);
  if (entry.servable?.length) notes.push(`pinnable: ${entry.servable.map((v) => `${name}@${v}`).join(", ")}`);
  if (history.length) notes.push(`Production history: ${history.map((v) => `v${v}`).join(" → ")}`);
  const deploy = entry.last_deploy;
  if (deploy?.version) notes.push(`last deploy v${deploy.version}${deploy.at ? ` at ${formatDateTime(deploy.at)}` : ""}`);
  if (notes.length) card.append(h("p", { className: "meta model-notes" }, notes.join(" · ")));
  return card;
}

async function load() {
  const status = $("models-status");
  status.textContent = "Loading models…";
  const listed = await getJSON("/v1/models");
  if (!listed.ok) {
    status.textContent = `Could not list the models (${listed.status || "no answer"} ${listed.error.code}): ${listed.error.message}`;
    return;
  }
  const models = listed.body.models ?? [];
  const details = await Promise.all(models.map((m) => getJSON(`/v1/models/${encodeURIComponent(m.name)}`)));
  const canaries = await Promise.all(models.map((m, i) =>
    details[i].ok && details[i].body.canary ? getJSON(`/v1/models/${encodeURIComponent(m.name)}/canary`) : null));
  $("models").replaceChildren(...models.map((m, i) => modelCard(m, details[i], canaries[i])));
  const time = new Date().toLocaleTimeString(undefined, { hourCycle: "h23" });
  status.textContent = listed.body.registry === false
    ? `The registry has not been read yet: these are the configured models (${time}).`
    : `${models.length} model${models.length === 1 ? "" : "s"} in the registry · updated ${time}`;
  setBusy(busy);
}

// ---------------------------------------------------------------- admin actions

function showNotice(kind, title, message, details = {}) {
  const box = $("action-result");
  box.className = `notice ${kind}`;
  box.setAttribute("role", kind === "error" ? "alert" : "status");
  $("action-title").textContent = title;
  $("action-message").textContent = message;
  const items = [];
  for (const [key, value] of Object.entries(details ?? {})) {
    if (["model", "name", "deploy_id"].includes(key)) continue;
    if (value && typeof value === "object") {
      for (const [k, v] of Object.entries(value)) {
        items.push(h("li", {}, h("code", {}, k), `: ${typeof v === "object" ? JSON.stringify(v) : v}`));
      }
    } else items.push(h("li", {}, `${key.replaceAll("_", " ")}: ${value}`));
  }
  $("action-details").replaceChildren(...items);
  box.hidden = false;
}

function setBusy(value) {
  busy = value;
  for (const button of document.querySelectorAll(".admin-action")) button.disabled = value || "unavailable" in button.dataset;
  $("refresh").disabled = value;
}

function describeSwitch(result) {
  const servers = result.servers?.length ?? 0;
  const parts = [];
  if (result.previous) parts.push(`It was v${result.previous}.`);
  parts.push(`${servers} inference process${servers === 1 ? "" : "es"} switched`);
  if (result.elapsed_ms !== undefined) parts[parts.length - 1] += ` in ${Math.round(result.elapsed_ms)} ms`;
  parts[parts.length - 1] += ".";
  if (result.lagging?.length) parts.push(`Still switching: ${result.lagging.join(", ")}.`);
  return parts.join(" ");
}

async function act(url, body, pending) {
  const token = adminToken();
  if (!token || busy) return;
  setBusy(true);
  showNotice("pending", pending, "Every inference process loads the version before any of them switches.");
  let response;
  try {
    response = await fetch(url, {
      method: "POST",
      headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json", Accept: "application/json" },
      body: body ? JSON.stringify(body) : undefined,
    });
  } catch (_) {
    showNotice("error", "Could not reach the gateway", "Nothing was changed by this page; check the service and try again.");
    setBusy(false);
    return;
  }
  if (response.ok) {
    const answer = await response.json();
    if (answer.aborted) {
      const record = answer.aborted.release ?? {};
      showNotice("success", `Aborted: candidate v${record.version} is retired`, record.reason ?? "");
    } else {
      const result = answer.promoted ?? answer.rolled_back ?? {};
      const verb = answer.rolled_back ? "Rolled back" : "Promoted";
      showNotice("success", `${verb}: ${result.name} v${result.version} is in production`, describeSwitch(result));
    }
  } else {
    const error = await errorOf(response);
    showNotice("error", `${response.status} ${error.code}`, error.message, error.details);
    if (response.status === 401 || error.code === "forbidden") $("admin-state").textContent = "The gateway refused this token.";
  }
  setBusy(false);
  await load();
  $("action-result").focus(); // the button pressed was redrawn: keyboard users continue from the answer
}

function setUpAdmin() {
  const input = $("admin-token");
  const show = () => {
    const has = Boolean(adminToken());
    $("admin-forget").hidden = !has;
    $("admin-save").textContent = has ? "Replace token" : "Use token";
    $("admin-state").textContent = has ? "Admin actions are on for this tab." : "Without a token this page is read-only.";
    input.value = "";
    input.placeholder = has ? "•••••••• (saved for this tab)" : "paste the admin token";
  };
  $("admin-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const value = input.value.trim();
    if (!value) return;
    sessionStorage.setItem(TOKEN_KEY, value);
    show();
    load();
  });
  $("admin-forget").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    $("action-result").hidden = true;
    show();
    load();
    input.focus();
  });
  show();
}

document.addEventListener("DOMContentLoaded", () => {
  setUpAdmin();
  $("refresh").addEventListener("click", load);
  load();
});
