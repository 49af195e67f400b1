// ccci-dist dashboard: countdowns, iteration timeline, cost chart (uPlot, vendored), live logs (SSE).
"use strict";
(function () {
  const run = document.getElementById("data").dataset.run;
  const fmt = (s) => {
    s = Math.max(0, Math.floor(s));
    if (s < 60) return s + "s";
    if (s < 3600) return Math.floor(s / 60) + "m" + String(s % 60).padStart(2, "0") + "s";
    if (s < 86400) return Math.floor(s / 3600) + "h" + String(Math.floor(s % 3600 / 60)).padStart(2, "0") + "m";
    return Math.floor(s / 86400) + "d" + String(Math.floor(s % 86400 / 3600)).padStart(2, "0") + "h";
  };

  // confirmations on every action
  document.querySelectorAll("form.confirm").forEach((f) => f.addEventListener("submit", (e) => {
    if (!window.confirm(f.dataset.confirm || "Sure?")) e.preventDefault();
  }));

  // freshness countdowns of the D-items
  const t0 = Date.now();
  const tick = () => document.querySelectorAll("td.countdown").forEach((td) => {
    if (td.dataset.left === "") return;
    const left = parseFloat(td.dataset.left) - (Date.now() - t0) / 1000;
    td.textContent = left < 0 ? "stale " + fmt(-left) : fmt(left);
    if (left < 0) td.parentElement.classList.add("stale");
  });
  tick(); setInterval(tick, 1000);

  // iteration timeline: one lane per role, bars coloured by outcome, host on hover
  const tl = JSON.parse(document.getElementById("timeline-data").textContent);
  const box = document.getElementById("timeline");
  if (tl.length) {
    const lo = Math.min(...tl.map((h) => h.start)), hi = Math.max(...tl.map((h) => h.end), lo + 1);
    const roles = [...new Set(tl.map((h) => h.role))];
    roles.forEach((role) => {
      const lane = document.createElement("div");
      lane.className = "lane"; lane.dataset.role = role;
      const label = document.createElement("span");
      label.className = "lane-label"; label.textContent = role;
      lane.appendChild(label);
      tl.filter((h) => h.role === role).forEach((h) => {
        const bar = document.createElement("div");
        bar.className = "bar " + (h.ok ? "ok" : "fail");
        bar.style.left = (100 * (h.start - lo) / (hi - lo)) + "%";
        bar.style.width = Math.max(0.2, 100 * (h.end - h.start) / (hi - lo)) + "%";
        bar.title = role + " #" + h.n + " on " + h.host + ": " + h.outcome + " (" + (h.end - h.start).toFixed(1) + "s, $" + h.cost.toFixed(4) + ")";
        lane.appendChild(bar);
      });
      box.appendChild(lane);
    });
  } else { box.textContent = "no iterations yet"; }

  // cost per day and role (stacked bars) with the daily budget line
  const cost = JSON.parse(document.getElementById("cost-data").textContent);
  const days = cost.per_day.map((d) => Date.parse(d.day + "T00:00:00Z") / 1000);
  const roles = [...new Set(cost.per_day.flatMap((d) => Object.keys(d).filter((k) => k !== "day")))];
  const colours = ["#42a5f5", "#ab47bc", "#26a69a", "#ffa726", "#8d6e63"];
  const stacked = []; let base = days.map(() => 0);
  roles.forEach((r) => { base = base.map((b, i) => b + (cost.per_day[i][r] || 0)); stacked.push(base.slice()); });
  const series = [{}];
  const data = [days];
  roles.slice().reverse().forEach((r, j) => {
    const i = roles.length - 1 - j;
    series.push({ label: r, fill: colours[i % colours.length], stroke: colours[i % colours.length],
                  paths: uPlot.paths.bars({ size: [0.6, 40] }), points: { show: false } });
    data.push(stacked[i]);
  });
  if (cost.daily_budget) {
    series.push({ label: "budget", stroke: "#c62828", dash: [6, 4], width: 2, points: { show: false } });
    data.push(days.map(() => cost.daily_budget));
  }
  const el = document.getElementById("cost-chart");
  const width = Math.max(280, Math.min(el.clientWidth || 600, 900));
  window.costChart = new uPlot({ width, height: 220, series,
    axes: [{}, { values: (u, v) => v.map((x) => "$" + x.toFixed(x && x < 0.1 ? 3 : 2)) }],
    scales: { x: { time: true }, y: { range: (u, a, b) => [0, Math.max(b, cost.daily_budget || 0, 0.01) * 1.1] } } },
    data, el);

  // live logs, rendered like `ccci-dist logs -f`
  document.querySelectorAll("pre.livelog").forEach((pre) => {
    const es = new EventSource("/run/" + encodeURIComponent(run) + "/log/" + encodeURIComponent(pre.dataset.role));
    es.onmessage = (e) => {
      JSON.parse(e.data).forEach((p) => {
        const line = document.createElement("div");
        line.className = "log-line log-" + p.kind;
        line.textContent = p.text;
        pre.appendChild(line);
      });
      while (pre.childElementCount > 500) pre.removeChild(pre.firstChild);
      pre.scrollTop = pre.scrollHeight;
    };
  });
})();
