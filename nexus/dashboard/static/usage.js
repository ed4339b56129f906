// The usage page's charts: uPlot (vendor/uplot, served from here) draws the series the server embedded
// as JSON in <script type="application/json" id="usage-charts"> (nexus/dashboard/usage_charts.py).
// Axes carry units, the legend shows the values under the cursor. Labels are set as text, never HTML.
(function () {
  "use strict";
  var holder = document.getElementById("usage-charts");
  if (!holder || !window.uPlot) return;
  var data = JSON.parse(holder.textContent);
  var palette = ["#3b82f6", "#16a34a", "#f59e0b", "#a855f7", "#ef4444", "#14b8a6", "#ec4899", "#6b7280"];
  var statusColour = { "2xx": "#16a34a", "4xx": "#dc8b1e", "429": "#ea580c", "529": "#b45309", "5xx": "#dc2626", "none": "#9ca3af" };
  var ink = getComputedStyle(document.body).color || "#1d2330";
  var grid = { stroke: "rgba(128,128,128,0.2)", width: 1 };

  function compact(v) {
    if (v == null) return "–";
    var a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(2) + "B";
    if (a >= 1e6) return (v / 1e6).toFixed(2) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    return String(Math.round(v));
  }
  function usd(v) {
    if (v == null) return "unknown";
    return "$" + (Math.abs(v) < 1 ? v.toFixed(4) : v.toFixed(2));
  }
  function utc(ts) { return uPlot.tzDate(new Date(ts * 1000), "Etc/UTC"); }

  // whole steps for counts (no "1.5 requests"), any step for dollars
  var whole = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5,
    1e6, 2e6, 5e6, 1e7, 2e7, 5e7, 1e8, 2e8, 5e8, 1e9, 2e9, 5e9, 1e10];

  function chart(el, x, series, unit, format, colours) {
    var opts = {
      width: Math.max(320, el.clientWidth || 600),
      height: 240,
      tzDate: utc,
      scales: { x: { time: true }, y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.05 : 1]; } } },
      axes: [
        { stroke: ink, grid: grid, ticks: grid, label: "time (UTC)", labelSize: 18 },
        { stroke: ink, grid: grid, ticks: grid, label: unit, labelSize: 18, size: 64,
          incrs: unit === "USD" ? undefined : whole,
          values: function (u, vals) { return vals.map(format); } }
      ],
      legend: { live: true },
      series: [{ label: "time (UTC)", value: "{YYYY}-{MM}-{DD} {HH}:{mm}" }]
    };
    var columns = [x];
    series.forEach(function (s, i) {
      opts.series.push({
        label: s.label,
        stroke: colours ? (colours[s.label] || palette[i % palette.length]) : palette[i % palette.length],
        width: 2,
        points: { size: 4 },
        value: function (u, v) { return format(v); }
      });
      columns.push(s.values);
    });
    el.textContent = "";
    var plot = new uPlot(opts, columns, el);
    window.addEventListener("resize", function () { plot.setSize({ width: Math.max(320, el.clientWidth), height: 240 }); });
    return plot;
  }

  var drawers = {
    tokens: function (el) { return chart(el, data.x, data.tokens, "tokens", compact); },
    cost: function (el) { return chart(el, data.x, data.cost, "USD", usd); },
    status: function (el) { return chart(el, data.x, data.status, "requests", compact, statusColour); },
    rolling: function (el) {
      return chart(el, data.rolling.x, [{ label: "output tokens, 5 h", values: data.rolling.values }], "tokens", compact);
    }
  };
  document.querySelectorAll(".uchart[data-chart]").forEach(function (el) {
    var draw = drawers[el.getAttribute("data-chart")];
    if (draw) { draw(el); el.setAttribute("data-drawn", "true"); }
  });
})();
