// Compare runs: one chart per metric, one line per run (the legend's colours), drawn from the points
// embedded in the page, then followed live over the dashboard WebSocket (one subscription per run,
// each asking for the points after the last it has).
import { COLOURS, MetricChart, chartControls } from "./chart.js";

const runs = JSON.parse(document.getElementById("compare-series").textContent);
const container = document.getElementById("charts");
const liveState = document.getElementById("live-state");
const byRun = new Map(runs.map((run, i) => [run.model_id, { ...run, colour: COLOURS[i % COLOURS.length], lastId: 0, series: new Map() }]));
const charts = new Map();
let view = { smoothing: 0, log: false };
let drawPending = false;

for (const swatch of document.querySelectorAll("#compare-legend .swatch")) {
  swatch.style.background = COLOURS[Number(swatch.dataset.series) % COLOURS.length];
}
chartControls(container, (chosen) => {
  view = chosen;
  for (const chart of charts.values()) chart.setView(view);
});

function add(modelId, points) {
  const run = byRun.get(modelId);
  for (const [id, step, name, value] of points) {
    if (id <= run.lastId) continue;
    run.lastId = id;
    if (!run.series.has(name)) run.series.set(name, []);
    run.series.get(name).push([step, value]);
  }
  if (!drawPending) {
    drawPending = true;
    requestAnimationFrame(draw);
  }
}

function draw() {
  drawPending = false;
  const names = [...new Set([...byRun.values()].flatMap((run) => [...run.series.keys()]))].sort();
  for (const name of names) {
    if (!charts.has(name)) {
      const chart = new MetricChart(container, name);
      chart.view = { ...view };
      charts.set(name, chart);
    }
    const series = [...byRun.values()]
      .filter((run) => run.series.has(name))
      .map((run) => ({ label: run.label, colour: run.colour, points: run.series.get(name) }));
    charts.get(name).drawSeries(series);
  }
  for (const name of names) container.append(charts.get(name).figure);
  if (names.length) document.getElementById("no-metrics").hidden = true;
}

function follow(delay = 1000) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${container.dataset.socket}`);
  socket.addEventListener("open", () => {
    delay = 1000;
    liveState.textContent = "Live: new points appear as the runs report them.";
    for (const run of byRun.values()) {
      socket.send(JSON.stringify({ type: "subscribe_run", model_id: run.model_id, after_id: run.lastId }));
    }
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.type === "points" && byRun.has(message.model_id)) add(message.model_id, message.points);
  });
  socket.addEventListener("close", (event) => {
    if (event.code === 4401) {
      liveState.textContent = "Live updates stopped: log in again, then reload.";
      return;
    }
    liveState.textContent = "Connection lost; reconnecting…";
    setTimeout(() => follow(Math.min(delay * 2, 30000)), delay);
  });
}

for (const run of runs) add(run.model_id, run.points);
follow();
