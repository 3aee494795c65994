// The run page: chart every metric the run has reported, then follow new points (and the run's
// status and steps) over the dashboard WebSocket. After a reconnect it asks for the points after the last one it has, so
// nothing is missed or drawn twice (point ids only grow).
import { MetricChart, chartControls, formatValue } from "./chart.js";

const embedded = JSON.parse(document.getElementById("metric-points").textContent);
const container = document.getElementById("charts");
const liveState = document.getElementById("live-state");
const series = new Map(); // metric name -> [[step, value], ...] in arrival order
const charts = new Map();
let lastId = 0;
let drawPending = false;
let view = { smoothing: 0, log: false };
chartControls(container, (chosen) => {
  view = chosen;
  for (const chart of charts.values()) chart.setView(view);
});

function add(points) {
  for (const [id, step, name, value] of points) {
    if (id <= lastId) continue;
    lastId = id;
    if (!series.has(name)) series.set(name, []);
    series.get(name).push([step, value]);
  }
  if (!drawPending) {
    drawPending = true;
    requestAnimationFrame(draw);
  }
}

function draw() {
  drawPending = false;
  const names = [...series.keys()].sort();
  for (const name of names) {
    if (!charts.has(name)) {
      charts.set(name, new MetricChart(container, name));
      charts.get(name).view = { ...view };
    }
    charts.get(name).draw(series.get(name));
  }
  for (const name of names) container.append(charts.get(name).figure); // keep them in name order
  updateLatest(names);
}

const LIVE = "Live: new points, operations and checkpoints appear as the run reports them.";
let runStatus = document.getElementById("run-status").textContent.trim();

// "Live" only while the run can still change: a finished run's page says so instead
function showLive() {
  liveState.textContent = runStatus === "finished" ? "This run is finished: its session ended, nothing more will arrive." : LIVE;
}

// the run's status and steps, pushed after each of its operations finishes
function showState({ status, step }) {
  const badge = document.getElementById("run-status");
  badge.textContent = status;
  badge.className = `status status-${status}`;
  document.getElementById("run-steps").textContent = String(step);
  runStatus = status;
  showLive();
}

// the operations and checkpoints tables, rendered by the server (escaped by Django's templates)
function showActivity(html) {
  document.getElementById("run-activity").innerHTML = html;
}

// the page's facts that points tell: steps done (optim_step reports at the new step) and the last loss
function updateFacts() {
  const steps = document.getElementById("run-steps"), loss = document.getElementById("run-last-loss");
  for (const [name, points] of series) {
    const [step, value] = points[points.length - 1];
    if (name === "loss:per_token") loss.textContent = formatValue(value);
    else if (steps && step > Number(steps.textContent)) steps.textContent = String(step);
  }
}

function updateLatest(names) {
  if (names.length === 0) return;
  updateFacts();
  document.getElementById("no-metrics")?.remove();
  let table = document.getElementById("latest-values");
  if (!table) {
    const wrap = document.createElement("div");
    wrap.className = "table-wrap";
    wrap.innerHTML =
      '<table id="latest-values"><thead><tr><th scope="col">Metric</th><th scope="col">Step</th>' +
      '<th scope="col">Value</th></tr></thead><tbody></tbody></table>';
    container.parentElement.append(wrap);
    table = wrap.querySelector("table");
  }
  const rows = names.map((name) => {
    const points = series.get(name);
    const [step, value] = points[points.length - 1];
    const row = document.createElement("tr");
    for (const text of [name, String(step), formatValue(value)]) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    return row;
  });
  table.tBodies[0].replaceChildren(...rows);
}

function follow(delay = 1000) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  const socket = new WebSocket(`${scheme}//${location.host}${container.dataset.socket}`);
  socket.addEventListener("open", () => {
    delay = 1000;
    showLive();
    socket.send(
      JSON.stringify({ type: "subscribe_run", model_id: embedded.model_id, after_id: lastId, activity: true }),
    );
  });
  socket.addEventListener("message", (event) => {
    const message = JSON.parse(event.data);
    if (message.model_id !== embedded.model_id) return;
    if (message.type === "points") add(message.points);
    else if (message.type === "run") showState(message);
    else if (message.type === "activity") showActivity(message.html);
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

add(embedded.points);
follow();
