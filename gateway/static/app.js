// digitflow web page: draw or upload a digit, follow its job through the pipeline, show the answer.
// Plain browser JS, no framework and no build step; it uses only the public API (README, "API").
// Shared helpers ($, sleep, formatPct, errorOf) come from common.js.
"use strict";

const STEPS = ["queued", "preprocessing", "inferring", "postprocessing", "done"];
// A failed job names the service that failed it; this is where that sits in the stepper.
const STEP_OF_ERROR_STAGE = { gateway: "queued", preprocess: "preprocessing", inference: "inferring", postprocess: "postprocessing" };
const STATUS_TEXT = {
  queued: "Queued, waiting for a worker…",
  preprocessing: "Preprocessing: finding the ink, cropping to 28×28…",
  inferring: "Running the model…",
  postprocessing: "Postprocessing: softmax, label, outlier check…",
};
const TIMELINE_PARTS = [
  { key: "gateway", name: "Gateway batching" },
  { key: "preprocess", name: "Preprocess" },
  { key: "inference", name: "Inference" },
  { key: "postprocess", name: "Postprocess" },
];
// Short polls show the stages live; after this long, long-polls stop a slow job from costing a request every tick.
const SHORT_POLL_MS = 100;
const SHORT_POLL_FOR_MS = 3000;
const LONG_POLL_S = 10;

function formatMs(ms) {
  if (ms === null || ms === undefined) return "–";
  if (ms >= 1000) return `${(ms / 1000).toFixed(2)} s`;
  return `${ms < 10 ? ms.toFixed(1) : Math.round(ms)} ms`;
}

// ---------------------------------------------------------------- drawing pad

function setUpPad(onChange) {
  const canvas = $("pad");
  const ctx = canvas.getContext("2d");
  let drawing = null; // the pointerId drawing now: a second finger must not draw a stray line
  let last = null;
  let hasInk = false;

  function clear() {
    // An opaque white page: the PNG then looks like ink on paper, which preprocessing expects.
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, canvas.width, canvas.height);
    hasInk = false;
    onChange(false);
  }

  function point(event) {
    const rect = canvas.getBoundingClientRect();
    return {
      x: ((event.clientX - rect.left) / rect.width) * canvas.width,
      y: ((event.clientY - rect.top) / rect.height) * canvas.height,
    };
  }

  function strokeTo(p) {
    // Thick round strokes, like a marker: about as thick relative to the digit as MNIST's pen.
    ctx.lineWidth = canvas.width * 0.07;
    ctx.lineCap = "round";
    ctx.lineJoin = "round";
    ctx.strokeStyle = "#000";
    ctx.beginPath();
    ctx.moveTo(last.x, last.y);
    ctx.lineTo(p.x, p.y);
    ctx.stroke();
    last = p;
  }

  canvas.addEventListener("pointerdown", (event) => {
    if (drawing !== null || (event.pointerType === "mouse" && event.button !== 0)) return;
    event.preventDefault();
    drawing = event.pointerId;
    try {
      canvas.setPointerCapture(event.pointerId); // keep the stroke when it leaves the pad
    } catch (_) {
      /* a pointer the browser no longer tracks: draw without capture */
    }
    last = point(event);
    strokeTo(last); // a tap leaves a dot
    if (!hasInk) {
      hasInk = true;
      onChange(true);
    }
  });
  canvas.addEventListener("pointermove", (event) => {
    if (event.pointerId !== drawing) return;
    // Coalesced events keep fast strokes smooth where the browser batches moves per frame.
    const events = event.getCoalescedEvents ? event.getCoalescedEvents() : [];
    for (const e of events.length ? events : [event]) strokeTo(point(e));
  });
  const end = (event) => {
    if (event.pointerId === drawing) drawing = null;
  };
  canvas.addEventListener("pointerup", end);
  canvas.addEventListener("pointercancel", end);

  clear();
  return {
    clear,
    toBlob: () => new Promise((resolve) => canvas.toBlob(resolve, "image/png")),
  };
}

// ---------------------------------------------------------------- rendering a job

function showStatus(text) {
  $("status").textContent = text;
}

function renderStages(status, error) {
  const failedAt = status === "failed" ? STEP_OF_ERROR_STAGE[error?.stage] ?? "queued" : null;
  const current = status === "succeeded" ? "done" : failedAt ?? status;
  const index = STEPS.indexOf(current);
  for (const li of $("stages").children) {
    const i = STEPS.indexOf(li.dataset.step);
    let state = i < index || status === "succeeded" ? "done" : i === index ? "active" : "pending";
    if (status === "failed" && (li.dataset.step === failedAt || li.dataset.step === "done")) state = "failed";
    li.className = state;
    if (state === "active") li.setAttribute("aria-current", "step");
    else li.removeAttribute("aria-current");
  }
  $("step-done").textContent = status === "failed" ? "Failed" : "Done";
}

function showError(title, message) {
  $("error-title").textContent = title;
  $("error-message").textContent = message;
  $("error").hidden = false;
}

function renderProbabilities(probabilities, label) {
  const list = $("probs");
  list.replaceChildren();
  probabilities.forEach((p, digit) => {
    const li = document.createElement("li");
    if (digit === label) li.className = "top";
    const name = document.createElement("span");
    name.className = "digit";
    name.textContent = digit;
    const bar = document.createElement("span");
    bar.className = "bar";
    const fill = document.createElement("span");
    fill.className = "fill";
    fill.style.width = `${Math.max(p * 100, 0)}%`;
    bar.append(fill);
    const pct = document.createElement("span");
    pct.className = "pct";
    pct.textContent = formatPct(p);
    li.append(name, bar, pct);
    li.setAttribute("aria-label", `${digit}: ${formatPct(p)}`);
    list.append(li);
  });
}

function renderTimeline(timings) {
  const bar = $("timeline");
  const rows = $("timings").tBodies[0];
  bar.replaceChildren();
  rows.replaceChildren();
  const segments = [];
  for (const part of TIMELINE_PARTS) {
    const t = timings[part.key];
    if (!t) continue;
    const queue = part.key === "gateway" ? t.batching : t.queue;
    const run = part.key === "gateway" ? null : t.run;
    if (queue) segments.push({ key: part.key, kind: "queue", ms: queue, text: `${part.name} wait` });
    if (run) segments.push({ key: part.key, kind: "run", ms: run, text: part.name });

    const tr = rows.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    const swatch = document.createElement("span");
    swatch.className = `swatch ${part.key}`;
    th.append(swatch, part.name);
    tr.append(th);
    tr.insertCell().textContent = formatMs(queue);
    tr.insertCell().textContent = part.key === "gateway" ? "" : formatMs(run);
  }
  // What the stages do not account for: dispatch, hand-offs between stages, writing the record.
  const accounted = segments.reduce((sum, s) => sum + s.ms, 0);
  const other = (timings.total ?? 0) - accounted;
  if (other > 0.05) {
    segments.push({ key: "other", kind: "run", ms: other, text: "Hand-offs between stages" });
    const tr = rows.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    const swatch = document.createElement("span");
    swatch.className = "swatch other";
    th.append(swatch, "Hand-offs");
    th.title = "Dispatch, hand-offs between stages and writing the job record";
    tr.append(th, document.createElement("td"));
    tr.insertCell().textContent = formatMs(other);
  }

  const total = timings.total ?? accounted;
  for (const s of segments) {
    const el = document.createElement("span");
    el.className = `segment ${s.key} ${s.kind}`;
    el.style.flexGrow = String(s.ms);
    el.title = `${s.text}: ${formatMs(s.ms)}`;
    const text = document.createElement("span");
    text.textContent = formatMs(s.ms);
    el.append(text);
    bar.append(el);
  }
  // Labels only where they fit: a 0.3 ms slice next to a 40 ms one is a sliver.
  for (const el of bar.children) {
    if (el.scrollWidth > el.clientWidth) el.firstChild.hidden = true;
  }
  bar.setAttribute(
    "aria-label",
    `Timeline, ${formatMs(total)} in all: ` + segments.map((s) => `${s.text} ${formatMs(s.ms)}`).join(", "),
  );
  $("total").textContent = `${formatMs(total)} in all`;
}

function renderResult(job) {
  const r = job.result;
  $("label").textContent = r.label;
  $("confidence").textContent = `${formatPct(r.confidence)} confident`;
  const outlier = $("outlier");
  outlier.className = `badge ${r.outlier ? "warn" : "ok"}`;
  outlier.textContent = r.outlier
    ? `Outlier: may not be a digit (score ${r.outlier_score?.toFixed(2) ?? "?"})`
    : "Looks like a digit";
  $("model").textContent = `${job.model?.name ?? "?"} v${job.model?.version ?? "?"}`;
  $("job-id").textContent = job.job_id;
  renderProbabilities(r.probabilities, r.label);
  $("result").hidden = false;
  renderTimeline(job.timings_ms ?? {});
  $("feedback-status").textContent = "";
}

// ---------------------------------------------------------------- talking to the API

function apiHeaders() {
  const key = sessionStorage.getItem("digitflow-api-key");
  return key ? { "X-API-Key": key } : {};
}

let currentRun = 0; // a newer submission makes older polling loops stop quietly

async function submitImage(blob, filename) {
  const run = ++currentRun;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(blob);
  preview.hidden = false;
  $("error").hidden = true;
  $("result").hidden = true;
  renderStages("queued", null);
  showStatus("Uploading…");
  // In the one-column (phone) layout the answer appears below the fold: bring it into view.
  if (matchMedia("(max-width: 760px)").matches) {
    const smooth = !matchMedia("(prefers-reduced-motion: reduce)").matches;
    $("result-title").scrollIntoView({ behavior: smooth ? "smooth" : "auto", block: "start" });
  }

  const form = new FormData();
  form.append("image", blob, filename);
  let response;
  try {
    response = await fetch("/v1/jobs", { method: "POST", body: form, headers: apiHeaders() });
  } catch (_) {
    if (run === currentRun) failRequest("Could not reach the gateway", "Check that the service is running, then try again.");
    return;
  }
  if (run !== currentRun) return;
  if (!response.ok) {
    const error = await errorOf(response);
    if (response.status === 401) $("api-key-row").hidden = false;
    failRequest(`The gateway refused the image (${response.status} ${error.code})`, error.message);
    return;
  }
  const accepted = await response.json();
  await follow(accepted.job_id, run);
}

function failRequest(title, message) {
  $("stages").querySelectorAll("li").forEach((li) => (li.className = "pending"));
  showError(title, message);
  showStatus(title);
}

async function follow(jobId, run) {
  const started = performance.now();
  for (;;) {
    const elapsed = performance.now() - started;
    const longPoll = elapsed > SHORT_POLL_FOR_MS;
    let job;
    try {
      const response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}${longPoll ? `?wait=${LONG_POLL_S}` : ""}`);
      if (!response.ok) {
        const error = await errorOf(response);
        if (run === currentRun) failRequest(`Could not read the job (${response.status} ${error.code})`, error.message);
        return;
      }
      job = await response.json();
    } catch (_) {
      // A dropped connection mid-poll is not the job's failure: retry after a pause.
      if (run !== currentRun) return;
      showStatus("Connection lost, retrying…");
      await sleep(1000);
      continue;
    }
    if (run !== currentRun) return;
    renderStages(job.status, job.error);
    if (job.status === "succeeded") {
      showStatus(`Done: it is a ${job.result.label} (${formatPct(job.result.confidence)}).`);
      renderResult(job);
      return;
    }
    if (job.status === "failed") {
      const e = job.error ?? {};
      showError(`Failed in ${e.stage ?? "an unknown stage"}: ${e.code ?? "error"}`, e.message ?? "");
      showStatus(`Failed in ${e.stage ?? "an unknown stage"}.`);
      return;
    }
    showStatus(`${STATUS_TEXT[job.status] ?? job.status} (${(elapsed / 1000).toFixed(1)} s)`);
    if (!longPoll) await sleep(SHORT_POLL_MS);
  }
}

async function sendFeedback(label) {
  const jobId = $("job-id").textContent;
  const status = $("feedback-status");
  status.textContent = "Sending…";
  let response;
  try {
    response = await fetch(`/v1/jobs/${encodeURIComponent(jobId)}/feedback`, {
      method: "POST",
      headers: { "Content-Type": "application/json", ...apiHeaders() },
      body: JSON.stringify({ label }),
    });
  } catch (_) {
    status.textContent = "Could not reach the gateway; feedback not sent.";
    return;
  }
  if (response.ok) {
    status.textContent = `Thanks, recorded: it was a ${label}.`;
    return;
  }
  const error = await errorOf(response);
  // Until the gateway has the endpoint, a route-level 404/405 just means "not yet".
  if (response.status === 405 || (response.status === 404 && error.code !== "job_not_found")) {
    status.textContent = "Feedback is not available yet.";
  } else {
    status.textContent = `Feedback not recorded: ${error.message}`;
  }
}

// ---------------------------------------------------------------- wiring

function firstImage(files) {
  return Array.from(files ?? []).find((f) => f.type.startsWith("image/") || f.type === "") ?? null;
}

function setUpUpload() {
  const input = $("file");
  const zone = $("dropzone");
  input.addEventListener("change", () => {
    const file = input.files[0];
    if (file) submitImage(file, file.name);
    input.value = ""; // choosing the same file again should submit again
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (event) => {
      event.preventDefault();
      zone.classList.add("dragging");
    });
  }
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    const file = firstImage(event.dataTransfer?.files);
    if (file) submitImage(file, file.name || "dropped-image");
  });
  // A file dropped next to the zone would otherwise make the browser navigate away from the page.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const file = firstImage(event.clipboardData?.files);
    if (file) submitImage(file, file.name || "pasted-image.png");
  });

  const keyInput = $("api-key");
  keyInput.value = sessionStorage.getItem("digitflow-api-key") ?? "";
  keyInput.addEventListener("change", () => sessionStorage.setItem("digitflow-api-key", keyInput.value.trim()));
}

function setUpFeedback() {
  const box = $("feedback-buttons");
  for (let digit = 0; digit <= 9; digit++) {
    const button = document.createElement("button");
    button.type = "button";
    button.className = "button digit-button";
    button.textContent = digit;
    button.setAttribute("aria-label", `It was a ${digit}`);
    button.addEventListener("click", () => sendFeedback(digit));
    box.append(button);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  const submitButton = $("submit-drawing");
  const pad = setUpPad((hasInk) => {
    submitButton.disabled = !hasInk;
    $("pad-placeholder").hidden = hasInk;
  });
  $("clear").addEventListener("click", pad.clear);
  submitButton.addEventListener("click", async () => submitImage(await pad.toBlob(), "drawing.png"));
  setUpUpload();
  setUpFeedback();
});
