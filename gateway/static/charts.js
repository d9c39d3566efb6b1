// digitflow: a tiny SVG chart helper for the monitoring page. No library, no build step.
//
// Charts.time(container, spec) draws one time chart into `container` (and redraws it when the
// container is resized). A spec:
//   { label, times: [unix s, ...], bucket: s, height,
//     y: { min, max, format },                      // the value axis; format(v) -> text
//     lines: [{ name, color, values, dashed }],     // values[i] may be null: the line breaks
//     bars: [{ name, color, values }],               // overlaid bars, one per bucket
//     stacks: { names, colors, values: [[...], ...] }, // stacked bars (shares per bucket)
//     thresholds: [{ value, label }], alerts: [[kind, ...] per bucket], alertName: (kind) => text,
//     alertBand: true,
//     markers: [{ t, label }], empty: "text when there is nothing to draw" }
"use strict";

const Charts = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const MARGIN = { top: 16, right: 12, bottom: 26, left: 44 };
  const TIME_STEPS = [300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];

  function svg(tag, attributes = {}, ...children) {
    const el = document.createElementNS(NS, tag);
    for (const [key, value] of Object.entries(attributes)) {
      if (value !== null && value !== undefined) el.setAttribute(key, value);
    }
    el.append(...children);
    return el;
  }

  // Round numbers for an axis: 0, 0.25, 0.5 ... rather than 0, 0.2337 ...
  function valueTicks(min, max, count) {
    const raw = (max - min) / count;
    const magnitude = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * magnitude).find((s) => s >= raw) ?? raw;
    const ticks = [];
    for (let v = Math.ceil(min / step - 1e-9) * step; v <= max + 1e-9; v += step) ticks.push(Number(v.toFixed(10)));
    return ticks;
  }

  function timeTicks(start, end, maxTicks) {
    const step = TIME_STEPS.find((s) => (end - start) / s <= maxTicks) ?? TIME_STEPS.at(-1);
    // Aligned to the reader's clock: 12:00, 18:00 rather than 12:37, 18:37.
    const offset = -new Date(start * 1000).getTimezoneOffset() * 60;
    const ticks = [];
    for (let t = Math.ceil((start + offset) / step) * step - offset; t <= end; t += step) ticks.push(t);
    return { ticks, step };
  }

  function timeLabel(t, step, first) {
    const d = new Date(t * 1000);
    const day = d.toLocaleDateString(undefined, { day: "numeric", month: "short" });
    if (step >= 86400) return day;
    const time = d.toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    return (d.getHours() === 0 && d.getMinutes() === 0) || (first && step >= 3600) ? `${day} ${time}` : time;
  }

  // The bucket width: the smallest step between buckets (empty buckets may be left out).
  function defaultBucket(times) {
    const gaps = times.slice(1).map((t, i) => t - times[i]).filter((g) => g > 0);
    return gaps.length ? Math.min(...gaps) : 3600;
  }

  function formatWhen(t, bucket) {
    const options = { day: "numeric", month: "short", hour: "2-digit", minute: "2-digit", hourCycle: "h23" };
    const from = new Date(t * 1000).toLocaleString(undefined, options);
    const to = new Date((t + bucket) * 1000).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hourCycle: "h23" });
    return `${from}–${to}`;
  }

  // Runs of consecutive indexes whose predicate holds: [[first, last], ...]; a run also ends
  // where joined(i) says index i does not follow on from i - 1.
  function runs(n, predicate, joined = () => true) {
    const out = [];
    for (let i = 0; i < n; i++) {
      if (!predicate(i)) continue;
      if (out.length && out.at(-1)[1] === i - 1 && joined(i)) out.at(-1)[1] = i;
      else out.push([i, i]);
    }
    return out;
  }

  function draw(container) {
    const spec = container.chartSpec;
    const width = Math.max(260, Math.floor(container.clientWidth));
    container.chartWidth = width;
    const times = spec.times ?? [];
    const hasData =
      times.length > 0 &&
      ((spec.lines ?? []).some((l) => l.values.some((v) => v !== null && v !== undefined)) ||
        (spec.bars ?? []).some((b) => b.values.some((v) => v)) ||
        (spec.stacks?.values ?? []).some(Boolean));
    if (!hasData) {
      container.replaceChildren(
        Object.assign(document.createElement("p"), { className: "chart-empty", textContent: spec.empty ?? "No data yet." }),
      );
      return;
    }

    const height = spec.height ?? 200;
    const bucket = spec.bucket ?? defaultBucket(times);
    const t0 = times[0];
    const t1 = times.at(-1) + bucket;
    const markers = (spec.markers ?? []).filter((m) => m.t >= t0 && m.t <= t1);
    // Event labels get a row of their own above the plot, clear of the data and the threshold labels.
    const top = MARGIN.top + (markers.length ? 16 : 0);
    const plot = { left: MARGIN.left, top, right: width - MARGIN.right, bottom: height - MARGIN.bottom };
    const x = (t) => plot.left + ((t - t0) / (t1 - t0)) * (plot.right - plot.left);
    const { min: yMin, max: yMax } = spec.y;
    const y = (v) => plot.bottom - ((Math.min(Math.max(v, yMin), yMax) - yMin) / (yMax - yMin)) * (plot.bottom - plot.top);
    const format = spec.y.format ?? ((v) => String(v));
    const alerts = spec.alerts ?? [];

    const root = svg("svg", {
      width, height, viewBox: `0 0 ${width} ${height}`, class: "chart-svg", role: "img", "aria-label": spec.label,
    });

    // Grid and value axis.
    const grid = svg("g", { class: "grid" });
    for (const v of valueTicks(yMin, yMax, height < 170 ? 3 : 4)) {
      grid.append(svg("line", { x1: plot.left, x2: plot.right, y1: y(v), y2: y(v) }));
      const label = { x: plot.left - 6, y: y(v), class: "axis-label", "text-anchor": "end", "dominant-baseline": "middle" };
      grid.append(svg("text", label, format(v)));
    }
    root.append(grid);

    // Alerts: a red band behind the data and a red strip above the plot at every bucket with one.
    // Buckets follow each other unless the ones in between had no traffic (and were left out).
    const joined = (i) => i > 0 && times[i] - times[i - 1] <= bucket * 1.5;
    const alertRuns = runs(times.length, (i) => (alerts[i] ?? []).length > 0, joined);
    const alertLayer = svg("g", { class: "alerts" });
    for (const [first, last] of alertRuns) {
      const kinds = [...new Set(alerts.slice(first, last + 1).flat())].map(spec.alertName ?? ((k) => k)).join(", ");
      const bx = x(times[first]);
      const bw = Math.max(2, x(times[last] + bucket) - bx);
      const title = svg("title", {}, `Alert ${formatWhen(times[first], bucket * (last - first + 1))}: ${kinds}`);
      if (spec.alertBand !== false) {
        const band = { class: "alert-band", x: bx, y: plot.top, width: bw, height: plot.bottom - plot.top };
        alertLayer.append(svg("rect", band, title.cloneNode(true)));
      }
      alertLayer.append(svg("rect", { class: "alert-strip", x: bx, y: plot.top - 7, width: bw, height: 4, rx: 1 }, title));
    }
    root.append(alertLayer);

    // Bars: stacked shares or overlaid counts, one column per bucket.
    const slot = (i) => [x(times[i]), Math.max(1, x(times[i] + bucket) - x(times[i]))];
    const barLayer = svg("g", { class: "bars" });
    const bar = (bx, bw, top, bottom, fill) => {
      const pad = bw > 6 ? Math.min(2, bw * 0.15) : 0; // a gap between columns where there is room
      return svg("rect", { x: bx + pad, y: top, width: bw - 2 * pad, height: bottom - top, fill });
    };
    if (spec.stacks) {
      spec.stacks.values.forEach((shares, i) => {
        if (!shares) return;
        const [bx, bw] = slot(i);
        const total = shares.reduce((a, b) => a + b, 0) || 1;
        let acc = 0;
        shares.forEach((share, k) => {
          const top = y(((acc + share) / total) * yMax);
          const bottom = y((acc / total) * yMax);
          acc += share;
          if (bottom - top < 0.2) return;
          barLayer.append(bar(bx, bw, top, bottom, spec.stacks.colors[k]));
        });
      });
    }
    for (const bars of spec.bars ?? []) {
      bars.values.forEach((v, i) => {
        if (!v) return;
        const [bx, bw] = slot(i);
        barLayer.append(bar(bx, bw, y(v), plot.bottom, bars.color));
      });
    }
    root.append(barLayer);

    // Thresholds: dashed lines with their label.
    for (const th of spec.thresholds ?? []) {
      if (th.value === null || th.value === undefined || th.value < yMin || th.value > yMax) continue;
      root.append(
        svg("line", { class: "threshold", x1: plot.left, x2: plot.right, y1: y(th.value), y2: y(th.value) }),
        svg("text", { class: "threshold-label", x: plot.right - 4, y: y(th.value) - 4, "text-anchor": "end" }, th.label),
      );
    }

    // Lines, broken where a value is missing; a lone point is a dot.
    const centre = (i) => x(times[i] + bucket / 2);
    for (const line of spec.lines ?? []) {
      const ok = (i) => line.values[i] !== null && line.values[i] !== undefined;
      const segments = runs(times.length, ok, joined);
      const d = segments
        .map(([a, b]) => {
          const points = [];
          for (let i = a; i <= b; i++) points.push(`${centre(i).toFixed(1)},${y(line.values[i]).toFixed(1)}`);
          return `M${points.join("L")}`;
        })
        .join("");
      const g = svg("g", { class: "series", "data-series": line.name });
      g.append(svg("path", {
        d, fill: "none", stroke: line.color, "stroke-width": line.width ?? 2,
        "stroke-dasharray": line.dashed ? "5 4" : null, "stroke-linejoin": "round", "stroke-linecap": "round",
      }));
      for (const [a, b] of segments) {
        if (a === b) g.append(svg("circle", { cx: centre(a), cy: y(line.values[a]), r: 2.5, fill: line.color }));
      }
      root.append(g);
    }

    // Events (retraining, deploys): a vertical dashed line with a label.
    for (const marker of markers) {
      const mx = x(marker.t);
      const anchor = mx > (plot.left + plot.right) / 2 ? "end" : "start";
      root.append(
        svg("line", { class: "marker-line", x1: mx, x2: mx, y1: 4, y2: plot.bottom }),
        svg("text", { class: "marker-label", x: mx + (anchor === "end" ? -4 : 4), y: 12, "text-anchor": anchor }, marker.label),
      );
    }

    // Time axis.
    const axis = svg("g", { class: "axis" }, svg("line", { x1: plot.left, x2: plot.right, y1: plot.bottom, y2: plot.bottom }));
    const { ticks, step } = timeTicks(t0, t1, Math.max(2, Math.floor((plot.right - plot.left) / 95)));
    ticks.forEach((t, k) => {
      axis.append(svg("line", { x1: x(t), x2: x(t), y1: plot.bottom, y2: plot.bottom + 4 }));
      const anchor = x(t) < plot.left + 30 ? "start" : x(t) > plot.right - 30 ? "end" : "middle";
      const label = { class: "axis-label", x: x(t), y: plot.bottom + 16, "text-anchor": anchor };
      axis.append(svg("text", label, timeLabel(t, step, k === 0)));
    });
    root.append(axis);

    // Hover: a crosshair and a tooltip with the bucket's values.
    const cross = svg("line", { class: "crosshair", y1: plot.top, y2: plot.bottom, visibility: "hidden" });
    const overlay = svg("rect", {
      class: "overlay", x: plot.left, y: plot.top, width: plot.right - plot.left, height: plot.bottom - plot.top,
    });
    root.append(cross, overlay);
    const tip = Object.assign(document.createElement("div"), { className: "chart-tip", hidden: true });
    tip.setAttribute("role", "presentation");
    const nearest = (px) => {
      let best = 0;
      times.forEach((_, i) => {
        if (Math.abs(centre(i) - px) < Math.abs(centre(best) - px)) best = i;
      });
      return best;
    };
    overlay.addEventListener("pointermove", (event) => {
      const box = root.getBoundingClientRect();
      const i = nearest(event.clientX - box.left);
      cross.setAttribute("x1", centre(i));
      cross.setAttribute("x2", centre(i));
      cross.setAttribute("visibility", "visible");
      tip.replaceChildren(tooltip(spec, i, bucket));
      tip.hidden = false;
      const left = centre(i) + 12 + tip.offsetWidth > width ? centre(i) - 12 - tip.offsetWidth : centre(i) + 12;
      tip.style.left = `${Math.max(0, left)}px`;
      tip.style.top = `${plot.top}px`;
    });
    overlay.addEventListener("pointerleave", () => {
      cross.setAttribute("visibility", "hidden");
      tip.hidden = true;
    });

    container.replaceChildren(root, tip);
  }

  function tooltip(spec, i, bucket) {
    const frag = document.createDocumentFragment();
    frag.append(Object.assign(document.createElement("p"), { className: "tip-when", textContent: formatWhen(spec.times[i], bucket) }));
    const rows = spec.tooltip ? spec.tooltip(i) : (spec.lines ?? []).map((l) => [l.name, l.values[i], l.color]);
    const list = document.createElement("ul");
    for (const [name, value, color] of rows) {
      const swatch = Object.assign(document.createElement("span"), { className: "tip-swatch" });
      swatch.style.background = color;
      const text = value === null || value === undefined ? "–" : typeof value === "number" ? spec.y.format(value) : value;
      const li = document.createElement("li");
      li.append(swatch, `${name}: `, Object.assign(document.createElement("strong"), { textContent: text }));
      list.append(li);
    }
    frag.append(list);
    const alerts = spec.alerts?.[i] ?? [];
    if (alerts.length) {
      const names = alerts.map(spec.alertName ?? ((kind) => kind)).join(", ");
      frag.append(Object.assign(document.createElement("p"), { className: "tip-alert", textContent: `Alert: ${names}` }));
    }
    return frag;
  }

  // One observer redraws every chart whose width changed (a phone turned, a window resized).
  const resized = new ResizeObserver((entries) => {
    for (const entry of entries) {
      const el = entry.target;
      if (el.chartSpec && Math.abs(Math.floor(el.clientWidth) - (el.chartWidth ?? 0)) > 2) draw(el);
    }
  });

  function time(container, spec) {
    container.chartSpec = spec;
    container.classList.add("chart");
    draw(container);
    resized.observe(container);
  }

  return { time, defaultBucket };
})();
