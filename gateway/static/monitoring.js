// digitflow monitoring page: one model's accuracy, drift, outliers and class mix over time, its
// alerts and retraining history, from GET /v1/monitoring/<model>. Charts come from charts.js.
"use strict";

const WINDOWS = ["1h", "1d", "7d"];
const ALERT_NAMES = {
  prediction_drift: "Prediction drift",
  confidence_drift: "Confidence drift",
  input_drift: "Input drift",
  accuracy_drop: "Accuracy drop",
  outlier_rate: "Outlier rate",
};
const COLORS = {
  accuracy: "#4f46e5", estimated: "#0e9384", psi: "#d97706", ks: "#4f46e5", mmd: "#0e9384",
  outliers: "#b45309", jobs: "#c7d2fe", labelled: "#4f46e5",
};
// Ten distinct colours, one per class, readable next to each other in stacked bars.
const CLASS_COLORS = ["#4f46e5", "#0e9384", "#d97706", "#db2777", "#2563eb", "#65a30d", "#9333ea", "#dc2626", "#0891b2", "#78716c"];

const state = { model: null, report: null, version: null, labels: null, loading: 0 };

const pct = (v) => (v === null || v === undefined ? "–" : formatPct(v));
const num = (v, digits = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(digits));
// "p = 0.52", "p = 0.004", "p < 0.001", with no-break spaces so that it never wraps inside.
const formatP = (p) => (p < 0.001 ? "p\u00a0<\u00a00.001" : `p\u00a0=\u00a0${p.toFixed(p < 0.01 ? 3 : 2)}`);
const alertName = (kind) => ALERT_NAMES[kind] ?? kind.replaceAll("_", " ");

function ago(seconds) {
  const s = Math.max(0, Date.now() / 1000 - seconds);
  if (s < 90) return "just now";
  if (s < 5400) return `${Math.round(s / 60)} min ago`;
  if (s < 172800) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} days ago`;
}

// ---------------------------------------------------------------- loading

async function loadModels() {
  const select = $("model-select");
  const listed = await getJSON("/v1/models");
  const names = listed.ok ? listed.body.models.map((m) => m.name) : [];
  const wanted = new URLSearchParams(location.search).get("model");
  if (wanted && !names.includes(wanted)) names.push(wanted);
  if (!names.length) names.push("digits");
  select.replaceChildren(...names.map((n) => h("option", { value: n }, n)));
  select.value = wanted ?? names[0];
  state.model = select.value;
}

async function loadReport() {
  const run = ++state.loading;
  const model = state.model;
  $("monitor-status").textContent = `Loading ${model}…`;
  $("refresh").disabled = true;
  const [report, detail] = await Promise.all([
    getJSON(`/v1/monitoring/${encodeURIComponent(model)}`),
    getJSON(`/v1/models/${encodeURIComponent(model)}`),
  ]);
  if (run !== state.loading) return; // another model was chosen meanwhile
  $("refresh").disabled = false;
  $("monitor-error").hidden = true;
  state.labels = detail.ok ? detail.body : null;

  if (report.status === 404 || (report.ok && !(report.body.versions ?? []).length)) {
    showEmpty(model, report);
    return;
  }
  if (!report.ok) {
    $("dashboard").hidden = true;
    $("empty").hidden = true;
    $("monitor-error-title").textContent = `Could not load monitoring data (${report.status || "no answer"} ${report.error.code})`;
    $("monitor-error-message").textContent = report.error.message;
    $("monitor-error").hidden = false;
    $("monitor-status").textContent = "Could not load monitoring data.";
    return;
  }
  state.report = report.body;
  const versions = state.report.versions;
  for (const v of versions) v.version = String(v.version);
  const keep = versions.find((v) => v.version === state.version);
  state.version = (keep ?? versions.find((v) => v.production) ?? versions.at(-1)).version;
  const select = $("version-select");
  select.replaceChildren(
    ...versions.map((v) => h("option", { value: v.version }, `v${v.version}${v.production ? " · production" : ""}`)),
  );
  select.value = state.version;
  select.disabled = versions.length < 2;
  render();
}

function showEmpty(model, report) {
  state.report = null;
  $("dashboard").hidden = true;
  $("empty").hidden = false;
  $("version-select").replaceChildren();
  $("version-select").disabled = true;
  const why = report.ok
    ? `The monitor has not reported on ${model} yet.`
    : `The gateway has no monitoring report for ${model} (${report.status} ${report.error.code}).`;
  $("empty-text").textContent = `${why} Charts appear here once the monitor has run over some traffic and feedback.`;
  $("monitor-status").textContent = `No monitoring data yet for ${model}.`;
}

// ---------------------------------------------------------------- rendering

function classNames(versionName, count) {
  const versions = state.labels?.versions ?? [];
  const record =
    versions.find((v) => String(v.version) === versionName) ?? versions.find((v) => v.version === state.labels?.production);
  const labels = record?.labels ?? [];
  return Array.from({ length: count }, (_, i) => labels[i] ?? String(i));
}

function render() {
  const report = state.report;
  const version = report.versions.find((v) => v.version === state.version);
  const status = [`${report.model} v${version.version}${version.production ? " (production)" : ""}`];
  if (report.generated_at) status.push(`report from ${formatDateTime(report.generated_at)} (${ago(report.generated_at)})`);
  $("monitor-status").textContent = status.join(" · ");
  $("empty").hidden = true;
  $("dashboard").hidden = false; // charts measure their width: show the dashboard first
  renderTiles(version, report.thresholds ?? {});
  renderAlerts(version, report.thresholds ?? {});
  renderCharts(version, report);
  renderAge(version);
  renderWindows(version);
  renderRetraining(report.retraining ?? []);
}

function latestWindow(version) {
  const windows = WINDOWS.map((w) => [w, version.windows?.[w]]);
  return windows.find(([, stats]) => stats && stats.jobs > 0) ?? ["1h", version.windows?.["1h"] ?? {}];
}

function renderTiles(version, thresholds) {
  const [span, stats] = latestWindow(version);
  const active = new Set((version.alerts ?? []).map((a) => a.kind));
  const reference = version.reference?.heldout_accuracy;
  const tile = (label, value, note, alert) =>
    h("li", { className: `tile${alert ? " alert" : ""}` },
      h("p", { className: "tile-label" }, label),
      h("p", { className: "tile-value" }, value),
      h("p", { className: "tile-note" }, note));
  const jobs = WINDOWS.map((w) => version.windows?.[w]?.jobs ?? 0);
  $("tiles").replaceChildren(
    tile("Accuracy (feedback)", pct(stats.accuracy), `last ${span} · ${stats.labelled ?? 0} labelled`, active.has("accuracy_drop")),
    tile("Estimated accuracy", pct(stats.estimated_accuracy), `last ${span} · held-out ${pct(reference)}`, false),
    tile("Outlier rate", pct(stats.outlier_rate), `last ${span} · alert above ${pct(thresholds.outlier_rate)}`,
      active.has("outlier_rate")),
    tile("Jobs · last 1h", jobs[0].toLocaleString(), `${jobs[1].toLocaleString()} in 1d · ${jobs[2].toLocaleString()} in 7d`, false),
    tile("Active alerts", String(active.size), active.size ? [...active].map(alertName).join(", ") : "all clear", active.size > 0),
  );
}

function renderAlerts(version, thresholds) {
  const alerts = version.alerts ?? [];
  const list = $("alert-list");
  $("alert-count").textContent = alerts.length ? String(alerts.length) : "";
  $("alerts-card").classList.toggle("has-alerts", alerts.length > 0);
  if (!alerts.length) {
    list.replaceChildren(h("li", { className: "all-clear" }, "No active alerts."));
    return;
  }
  list.replaceChildren(
    ...alerts.map((a) => {
      const parts = [];
      if (a.statistic !== null && a.statistic !== undefined) parts.push(`statistic ${num(a.statistic)}`);
      if (a.threshold !== null && a.threshold !== undefined) parts.push(`threshold ${num(a.threshold)}`);
      if (a.p_value !== null && a.p_value !== undefined) {
        parts.push(`${formatP(a.p_value)} (alert below ${thresholds.p_value ?? "?"})`);
      }
      return h("li", { className: "alert-item" },
        h("p", { className: "alert-kind" }, alertName(a.kind), h("span", { className: "badge bad" }, `window ${a.window}`)),
        h("p", { className: "alert-detail" }, parts.join(" · ")),
        h("p", { className: "meta" }, a.since ? `since ${formatDateTime(a.since)} (${ago(a.since)})` : ""));
    }),
  );
}

function legend(id, items) {
  $(id).replaceChildren(
    ...items.map(([name, color, kind = "line"]) => {
      const swatch = h("span", { className: `legend-swatch ${kind}` });
      if (color) swatch.style.setProperty("--swatch", color);
      return h("li", {}, swatch, name);
    }),
  );
}

function renderCharts(version, report) {
  const series = version.series ?? [];
  const times = series.map((b) => b.t);
  const bucket = Charts.defaultBucket(times);
  const alerts = series.map((b) => b.alerts ?? []);
  const thresholds = report.thresholds ?? {};
  const markers = [
    ...(version.deployed_at ? [{ t: version.deployed_at, label: `v${version.version} deployed` }] : []),
    ...(report.retraining ?? []).map((r) => ({ t: r.at, label: `retrain → v${r.new_version}${r.promoted ? "" : " (not promoted)"}` })),
  ];
  const common = { times, bucket, alerts, alertName, markers, empty: `No traffic for v${version.version} yet.` };
  const values = (key) => series.map((b) => b[key] ?? null);
  const span = times.length ? `${times.length} buckets` : "no data";

  // Accuracy: from feedback, estimated from confidence, the held-out reference and the alert line.
  const reference = version.reference?.heldout_accuracy ?? null;
  const floor = reference !== null && thresholds.accuracy_drop !== undefined ? reference - thresholds.accuracy_drop : null;
  const accuracyValues = [...values("accuracy"), ...values("estimated_accuracy"), floor].filter((v) => v !== null);
  const low = Math.max(0, Math.floor((Math.min(...accuracyValues, 1) - 0.03) * 20) / 20);
  Charts.time($("chart-accuracy"), {
    ...common,
    label: `Accuracy over time, ${span}: from feedback and estimated; alerts shaded red`,
    height: 230,
    y: { min: Math.min(low, 0.9), max: 1, format: (v) => formatPct(v) },
    lines: [
      { name: "Accuracy (feedback)", color: COLORS.accuracy, values: values("accuracy") },
      { name: "Estimated accuracy", color: COLORS.estimated, values: values("estimated_accuracy"), dashed: true },
    ],
    thresholds: [
      { value: reference, label: `held-out ${pct(reference)}` },
      { value: floor, label: `alert below ${pct(floor)}` },
    ],
    tooltip: (i) => [
      ["Accuracy", series[i].accuracy == null ? "–" : `${pct(series[i].accuracy)} of ${series[i].labelled}`, COLORS.accuracy],
      ["Estimated", pct(series[i].estimated_accuracy), COLORS.estimated],
      ["Jobs", String(series[i].jobs ?? 0), COLORS.jobs],
    ],
  });
  legend("accuracy-legend", [
    ["Accuracy (feedback)", COLORS.accuracy],
    ["Estimated", COLORS.estimated, "dashed"],
    ["Threshold", null, "threshold"],
    ["Alert", null, "alert"],
  ]);

  // Drift: three statistics on three scales, side by side.
  const small = (id, key, name, color, threshold) => {
    const vs = values(key).filter((v) => v !== null);
    const top = Math.max(...vs, threshold ?? 0, 0.01) * 1.15;
    Charts.time($(id), {
      ...common,
      label: `${name} over time, ${span}${threshold ? `; alert above ${threshold}` : ""}`,
      height: 160,
      y: { min: 0, max: top, format: (v) => (top < 0.1 ? v.toFixed(3) : v.toFixed(2)) },
      lines: [{ name, color, values: values(key) }],
      thresholds: threshold ? [{ value: threshold, label: `alert ${threshold}` }] : [],
      markers: [],
      empty: times.length ? `No ${name} values yet.` : common.empty,
    });
  };
  small("chart-psi", "psi", "PSI", COLORS.psi, thresholds.psi);
  small("chart-ks", "confidence_ks", "Confidence KS", COLORS.ks, null);
  small("chart-mmd", "mmd", "Embedding MMD", COLORS.mmd, null);
  legend("drift-legend", [["PSI", COLORS.psi], ["KS", COLORS.ks], ["MMD", COLORS.mmd], ["Alert", null, "alert"]]);

  // Outliers, with the alert threshold.
  const outlierTop = Math.max(...values("outlier_rate").filter((v) => v !== null), thresholds.outlier_rate ?? 0, 0.05) * 1.15;
  Charts.time($("chart-outliers"), {
    ...common,
    label: `Outlier rate over time, ${span}; alert above ${pct(thresholds.outlier_rate)}`,
    height: 180,
    y: { min: 0, max: Math.min(1, outlierTop), format: (v) => formatPct(v) },
    lines: [{ name: "Outlier rate", color: COLORS.outliers, values: values("outlier_rate") }],
    thresholds: [{ value: thresholds.outlier_rate, label: `alert ${pct(thresholds.outlier_rate)}` }],
  });
  legend("outlier-legend", [["Outlier rate", COLORS.outliers], ["Threshold", null, "threshold"], ["Alert", null, "alert"]]);

  // Traffic: jobs and the labelled ones.
  const jobsTop = Math.max(...values("jobs").filter((v) => v !== null), 1) * 1.1;
  Charts.time($("chart-traffic"), {
    ...common,
    label: `Jobs and labelled jobs per bucket, ${span}`,
    height: 180,
    y: { min: 0, max: jobsTop, format: (v) => (jobsTop < 10 ? v.toFixed(1) : Math.round(v).toLocaleString()) },
    bars: [
      { name: "Jobs", color: COLORS.jobs, values: values("jobs") },
      { name: "Labelled", color: COLORS.labelled, values: values("labelled") },
    ],
    tooltip: (i) => [
      ["Jobs", String(series[i].jobs ?? 0), COLORS.jobs],
      ["Labelled", String(series[i].labelled ?? 0), COLORS.labelled],
    ],
  });
  legend("traffic-legend", [["Jobs", COLORS.jobs, "box"], ["Labelled", COLORS.labelled, "box"], ["Alert", null, "alert"]]);

  // Class mix: the share of each predicted class per bucket.
  const width = Math.max(10, ...series.map((b) => b.class_mix?.length ?? 0));
  const names = classNames(version.version, width);
  const colors = names.map((_, k) => CLASS_COLORS[k % CLASS_COLORS.length]);
  Charts.time($("chart-mix"), {
    ...common,
    label: `Share of each predicted class per bucket, ${span}`,
    height: 220,
    y: { min: 0, max: 1, format: (v) => formatPct(v) },
    stacks: { names, colors, values: series.map((b) => b.class_mix ?? null) },
    alertBand: false,
    tooltip: (i) => {
      const mix = series[i].class_mix ?? [];
      return names.map((n, k) => [n, mix[k] === undefined ? "–" : pct(mix[k]), colors[k]]).reverse();
    },
  });
  legend("mix-legend", [...names.map((n, k) => [n, colors[k], "box"]), ["Alert", null, "alert-strip"]]);
}

function renderAge(version) {
  const rows = version.accuracy_by_age ?? [];
  const list = $("age-bars");
  const reference = version.reference?.heldout_accuracy ?? null;
  const known = rows.map((r) => r.accuracy).filter((v) => v !== null && v !== undefined);
  if (!known.length) {
    list.replaceChildren(h("li", { className: "chart-empty" }, "No labelled jobs yet."));
    return;
  }
  // Bars start at a round floor under the lowest value: 95% and 97% should not look alike.
  const low = Math.max(0, Math.floor((Math.min(...known, reference ?? 1) - 0.05) * 10) / 10);
  const at = (v) => `${((v - low) / (1 - low)) * 100}%`;
  list.replaceChildren(
    ...rows.map((r) => {
      const fill = h("span", { className: "age-fill" });
      const track = h("span", { className: "age-track" }, fill);
      if (r.accuracy !== null && r.accuracy !== undefined) fill.style.width = at(r.accuracy);
      if (reference !== null) {
        const mark = h("span", { className: "age-ref", title: `held-out ${pct(reference)}` });
        mark.style.left = at(reference);
        track.append(mark);
      }
      return h("li", { "aria-label": `${r.age}: ${pct(r.accuracy)} on ${r.labelled ?? 0} labelled jobs` },
        h("span", { className: "age-name" }, r.age,
          h("span", { className: "age-n" }, `${(r.labelled ?? 0).toLocaleString()} labelled`)),
        track, h("span", { className: "age-value" }, pct(r.accuracy)));
    }),
    h("li", { className: "age-axis", "aria-hidden": "true" },
      h("span"), h("span", { className: "age-scale" }, h("span", {}, pct(low)), h("span", {}, "100%")), h("span")),
  );
  if (reference !== null) {
    list.append(h("li", { className: "meta age-note" }, `The mark on each bar is the held-out accuracy, ${pct(reference)}.`));
  }
}

function renderWindows(version) {
  const table = $("windows-table");
  const windows = WINDOWS.map((w) => version.windows?.[w] ?? null);
  const stat = (value, pValue, alert) => {
    const dot = alert ? h("span", { className: "alert-dot", title: "alert", "aria-label": "alert" }) : null;
    const shown = h("span", { className: "stat-value" }, dot, value);
    const td = h("td", { className: alert ? "alert" : "" }, shown);
    if (pValue !== null && pValue !== undefined) td.append(h("span", { className: "p-value" }, formatP(pValue)));
    return td;
  };
  const rows = [
    ["Jobs", (w) => h("td", {}, (w.jobs ?? 0).toLocaleString())],
    ["Labelled", (w) => h("td", {}, (w.labelled ?? 0).toLocaleString())],
    ["Accuracy", (w) => h("td", {}, pct(w.accuracy))],
    ["Estimated", (w) => h("td", {}, pct(w.estimated_accuracy))],
    ["Outliers", (w) => h("td", {}, pct(w.outlier_rate))],
    ["PSI", (w) => stat(num(w.prediction_drift?.psi), w.prediction_drift?.p_value, w.prediction_drift?.alert)],
    ["Confidence KS", (w) => stat(num(w.confidence_drift?.ks), w.confidence_drift?.p_value, w.confidence_drift?.alert)],
    ["Embedding MMD", (w) => {
      const mmd = w.input_drift?.embedding_mmd;
      return stat(num(mmd?.mmd, 4), mmd?.p_value, w.input_drift?.alert);
    }],
  ];
  const head = h("thead", {}, h("tr", {}, h("th", { scope: "col" }, h("span", { className: "visually-hidden" }, "Statistic")),
    ...WINDOWS.map((w) => h("th", { scope: "col" }, w))));
  const body = h("tbody", {},
    ...rows.map(([name, cell]) => h("tr", {}, h("th", { scope: "row" }, name),
      ...windows.map((w) => (w && w.jobs ? cell(w) : h("td", { className: "muted" }, "–"))))));
  table.replaceChildren(table.caption, head, body);
}

function renderRetraining(history) {
  const body = $("retraining-table").tBodies[0];
  const newestFirst = [...history].sort((a, b) => b.at - a.at);
  body.replaceChildren(
    ...newestFirst.map((r) => h("tr", {},
      h("td", { "data-label": "When" }, formatDateTime(r.at)),
      h("td", { "data-label": "Trigger" }, h("span", { className: `badge trigger-${r.trigger}` }, r.trigger)),
      h("td", { "data-label": "New version" }, r.new_version ? `v${r.new_version}` : "–"),
      h("td", { "data-label": "Promoted" },
        h("span", { className: `badge ${r.promoted ? "ok" : "neutral"}` }, r.promoted ? "promoted" : "not promoted")),
      h("td", { "data-label": "Why", className: "reason" }, r.reason ?? ""))),
  );
  $("retraining-table").hidden = history.length === 0;
  $("retraining-empty").hidden = history.length > 0;
}

// ---------------------------------------------------------------- wiring

document.addEventListener("DOMContentLoaded", async () => {
  await loadModels();
  $("model-select").addEventListener("change", () => {
    state.model = $("model-select").value;
    state.version = null;
    history.replaceState(null, "", `?model=${encodeURIComponent(state.model)}`);
    loadReport();
  });
  $("version-select").addEventListener("change", () => {
    state.version = $("version-select").value;
    render();
  });
  $("refresh").addEventListener("click", loadReport);
  $("controls").addEventListener("submit", (event) => event.preventDefault());
  await loadReport();
});
