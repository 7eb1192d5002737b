// The charts of a flashsale report, drawn with the vendored uPlot from the JSON in the page.
// Inline in report.html with uPlot itself: the file opens offline and fetches nothing.
(function () {
  "use strict";
  const data = JSON.parse(document.getElementById("flashsale-report-data").textContent);
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2",
    "#17becf", "#7f7f7f"];
  const OUTCOME_COLORS = { succeeded: "#2ca02c", declined: "#ff7f0e", sold_out: "#17becf",
    failed: "#d62728", timeout: "#7f0000", disconnected: "#9467bd", error: "#000000" };
  const charts = [];
  window.flashsaleCharts = charts; // for tests: every chart drawn, with its series

  // Faults (and any other band) drawn behind every time chart, labelled at the top.
  function bandsPlugin(bands) {
    return {
      hooks: {
        drawClear: [function (u) {
          const ctx = u.ctx;
          bands.forEach(function (band, i) {
            const x0 = u.valToPos(band.start, "x", true);
            const x1 = u.valToPos(Math.max(band.end, band.start + 0.2), "x", true);
            ctx.save();
            ctx.fillStyle = i % 2 ? "rgba(214,39,40,0.10)" : "rgba(255,127,14,0.14)";
            ctx.fillRect(x0, u.bbox.top, Math.max(2, x1 - x0), u.bbox.height);
            ctx.fillStyle = "#8c2d04";
            ctx.font = (10 * devicePixelRatio) + "px sans-serif";
            ctx.fillText(band.label, x0 + 3, u.bbox.top + 12 * devicePixelRatio);
            ctx.restore();
          });
        }],
      },
    };
  }

  function width(el) {
    return Math.max(320, Math.min(1100, el.clientWidth || 900));
  }

  function chart(id, title, xs, lines, options) {
    const el = document.getElementById(id);
    if (!el) return;
    options = options || {};
    if (!xs.length) {
      el.textContent = title + ": no data";
      el.classList.add("empty");
      return;
    }
    const series = [{ label: options.xLabel || "s" }].concat(lines.map(function (line, i) {
      return {
        label: line.label,
        stroke: line.color || COLORS[i % COLORS.length],
        width: 2,
        points: { show: xs.length < 40 },
        spanGaps: !!options.spanGaps,
        value: function (u, v) { return v == null ? "-" : (+v.toFixed(2)) + (options.unit || ""); },
      };
    }));
    const log = !!options.log;
    const plot = new uPlot({
      title: title,
      width: width(el),
      height: 280,
      plugins: [bandsPlugin(options.bands || [])],
      scales: {
        x: { time: false },
        y: log ? { distr: 3, log: 10 } : { range: function (u, min, max) { return [0, max > 0 ? max * 1.05 : 1]; } },
      },
      axes: [
        { label: options.xLabel || "seconds into the run", values: options.xValues },
        { label: options.yLabel || "", size: 70 },
      ],
      series: series,
    }, [xs].concat(lines.map(function (line) { return line.values; })), el);
    charts.push({ id: id, title: title, series: lines.length, points: xs.length, plot: plot });
  }

  const series = data.series || [];
  const step = data.interval_s || 1;
  const t = series.map(function (row) { return row.t_s; });
  const bands = data.bands || [];

  chart("chart-throughput", "Throughput: arrivals and customers finished per second", t, [
    { label: "arrivals/s", values: series.map(function (r) { return r.arrivals / step; }) },
    { label: "finished/s", values: series.map(function (r) {
      return Object.values(r.outcomes).reduce(function (a, b) { return a + b; }, 0) / step;
    }) },
  ], { yLabel: "per second", bands: bands });

  const timeline = data.timeline || [];
  chart("chart-active", "Active customers: in flight and sockets open", timeline.map(function (r) { return r.t_s; }), [
    { label: "in flight", values: timeline.map(function (r) { return r.in_flight; }) },
    { label: "sockets open", values: timeline.map(function (r) { return r.sockets; }) },
  ], { yLabel: "customers", bands: bands });

  function latencyLines() {
    const lines = [
      { label: "e2e p50", values: series.map(function (r) { return r.e2e_ms.count ? r.e2e_ms.p50 : null; }) },
      { label: "e2e p99", values: series.map(function (r) { return r.e2e_ms.count ? r.e2e_ms.p99 : null; }) },
    ];
    (data.phases || []).forEach(function (phase) {
      if (phase === "e2e") return;
      lines.push({ label: phase + " p99", values: series.map(function (r) {
        const s = (r.phases_ms || {})[phase];
        return s && s.count ? s.p99 : null;
      }) });
    });
    return lines;
  }
  function drawLatency() {
    const el = document.getElementById("chart-latency");
    if (!el) return;
    el.innerHTML = "";
    const log = document.getElementById("latency-log").checked;
    for (let i = charts.length - 1; i >= 0; i--) {
      if (charts[i].id === "chart-latency") { charts[i].plot.destroy(); charts.splice(i, 1); }
    }
    chart("chart-latency", "Latency over time per phase (corrected, by completion)", t, latencyLines(),
      { yLabel: "ms", unit: " ms", log: log, bands: bands });
  }
  const toggle = document.getElementById("latency-log");
  if (toggle) toggle.addEventListener("change", drawLatency);
  drawLatency();

  chart("chart-outcomes", "Outcomes over time (customers finished per interval)", t,
    (data.outcomes || []).map(function (outcome) {
      return { label: outcome, color: OUTCOME_COLORS[outcome],
        values: series.map(function (r) { return r.outcomes[outcome] || 0; }) };
    }), { yLabel: "customers", bands: bands });

  chart("chart-errors", "Server 5xx answers and retries over time", t, [
    { label: "server 5xx", color: "#d62728", values: series.map(function (r) { return r.server_errors || 0; }) },
    { label: "retries", color: "#ff7f0e", values: series.map(function (r) { return r.retries || 0; }) },
  ], { yLabel: "per interval", bands: bands });

  // The HDR plot: x is log10(1/(1-percentile)), so the tail gets the room.
  const curves = data.curves || {};
  const names = Object.keys(curves);
  if (names.length) {
    const xs = [];
    names.forEach(function (name) { curves[name].forEach(function (p) { xs.push(p[0]); }); });
    const grid = Array.from(new Set(xs)).sort(function (a, b) { return a - b; });
    const lines = names.map(function (name) {
      const at = new Map(curves[name].map(function (p) { return [p[0], p[1]]; }));
      return { label: name, values: grid.map(function (x) { return at.has(x) ? at.get(x) : null; }) };
    });
    const labels = { 0: "0%", 1: "90%", 2: "99%", 3: "99.9%", 4: "99.99%", 5: "99.999%" };
    chart("chart-percentiles", "Percentile distribution per phase (corrected)", grid, lines, {
      xLabel: "percentile", yLabel: "ms", unit: " ms", log: true,
      spanGaps: true,
      xValues: function (u, splits) {
        return splits.map(function (v) { return Number.isInteger(v) ? (labels[v] || "") : ""; });
      },
    });
  } else {
    chart("chart-percentiles", "Percentile distribution per phase (corrected)", [], []);
  }
})();
