// digitflow: helpers every page shares (loaded before the page's own script). Plain browser JS.
"use strict";

const LOOPBACK = new Set(["127.0.0.1", "localhost", "::1", "[::1]"]);

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function formatPct(p) {
  const pct = p * 100;
  return pct >= 99.95 || pct < 0.05 ? `${pct.toFixed(0)}%` : `${pct.toFixed(1)}%`;
}

// "26 Nov 2026, 20:16": a date and time in the reader's locale and time zone.
function formatDateTime(seconds) {
  if (seconds === null || seconds === undefined || !Number.isFinite(seconds)) return "–";
  return new Date(seconds * 1000).toLocaleString(undefined, {
    day: "numeric", month: "short", year: "numeric", hour: "2-digit", minute: "2-digit", hourCycle: "h23",
  });
}

// An element with attributes and children: h("td", { className: "num" }, "0.99").
function h(tag, attributes = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (key in el && !key.includes("-")) el[key] = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

// Turns any non-2xx answer into the API's error shape, even when a proxy answered with HTML.
async function errorOf(response) {
  try {
    const body = await response.json();
    if (body?.error?.message) return body.error;
  } catch (_) {
    /* not JSON */
  }
  return { code: `http_${response.status}`, message: response.statusText || `HTTP ${response.status}` };
}

// GET a JSON document: {ok, status, body} or {ok: false, status, error}; status 0 when unreachable.
async function getJSON(url) {
  let response;
  try {
    response = await fetch(url, { headers: { Accept: "application/json" } });
  } catch (_) {
    return { ok: false, status: 0, error: { code: "unreachable", message: "Could not reach the gateway." } };
  }
  if (!response.ok) return { ok: false, status: response.status, error: await errorOf(response) };
  try {
    return { ok: true, status: response.status, body: await response.json() };
  } catch (_) {
    return { ok: false, status: response.status, error: { code: "bad_json", message: "The answer was not JSON." } };
  }
}

function setUpLinks() {
  const flower = new URL(document.body.dataset.flowerUrl, location.href);
  // The default points at loopback, which is only right when the browser runs on the gateway's machine.
  if (LOOPBACK.has(flower.hostname) && !LOOPBACK.has(location.hostname)) flower.hostname = location.hostname;
  $("flower-link").href = flower.href;
  $("metrics-link").href = document.body.dataset.metricsUrl;
}

document.addEventListener("DOMContentLoaded", setUpLinks);
