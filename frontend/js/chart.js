// A small SVG line chart of one metric over steps, one line per series (a run). No library: axes
// with round ticks and titles, gaps where a value is missing (JSON has no NaN), optional smoothing
// (an exponential moving average, debiased as TensorBoard's) and log scale, the values under the
// pointer on hover, and an aria-label that states each series' latest value.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 400, HEIGHT = 210, LEFT = 64, RIGHT = 12, TOP = 10, BOTTOM = 40;
const MAX_DRAWN = 1500; // beyond this many points a line is thinned (the last point is always kept)
// Okabe-Ito: distinguishable with the common colour-vision deficiencies
export const COLOURS = ["#0072b2", "#d55e00", "#009e73", "#cc79a7", "#e69f00", "#56b4e9", "#000000", "#f0e442"];

const el = (name, attrs = {}, text) => {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};

// 4 significant digits, thousands separated ("12,345", "0.001234"); "—" for a missing value
export const formatValue = (v, digits = 4) =>
  v === null || v === undefined
    ? "—"
    : Number(v.toPrecision(digits)).toLocaleString("en-US", { maximumSignificantDigits: digits });

// round tick values (1, 2 or 5 times a power of ten) covering [low, high]
export const niceTicks = (low, high, count = 4) => {
  const span = high - low;
  const raw = span / Math.max(count - 1, 1);
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
  const ticks = [];
  for (let t = Math.ceil(low / step) * step; t <= high + step * 1e-9; t += step) ticks.push(Number(t.toPrecision(12)));
  return ticks;
};

const thinned = (points) => {
  if (points.length <= MAX_DRAWN) return points;
  const stride = Math.ceil(points.length / MAX_DRAWN);
  const kept = points.filter((_, i) => i % stride === 0);
  if (kept[kept.length - 1] !== points[points.length - 1]) kept.push(points[points.length - 1]);
  return kept;
};

// an exponential moving average with weight `w` on the past, debiased so the first points are not pulled to 0
export const smoothed = (points, w) => {
  if (!w) return points;
  let average = 0, n = 0;
  return points.map(([s, v]) => {
    if (v === null) return [s, null];
    average = average * w + (1 - w) * v;
    n += 1;
    return [s, average / (1 - w ** n)];
  });
};

export class MetricChart {
  // options.xLabel(x) names a tick of the x axis (default: the step number); options.xName is the
  // x axis's title and its word in the aria-label ("step" by default)
  constructor(container, name, options = {}) {
    this.name = name;
    this.xLabel = options.xLabel || ((s) => formatValue(Math.round(s)));
    this.xName = options.xName || "step";
    this.view = { smoothing: 0, log: false };
    this.series = [];
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    this.figure.dataset.metric = name;
    const caption = document.createElement("figcaption");
    caption.textContent = name;
    this.svg = el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img" });
    this.hover = document.createElement("div");
    this.hover.className = "chart-hover";
    this.hover.hidden = true;
    this.figure.append(caption, this.svg, this.hover);
    container.append(this.figure);
    this.svg.addEventListener("mousemove", (event) => this.showValuesAt(event));
    this.svg.addEventListener("mouseleave", () => this.hideValues());
  }

  // one series, as [[step, value], ...]
  draw(points) {
    this.drawSeries([{ label: this.name, points }]);
  }

  // view: {smoothing: 0..0.99, log: bool}; a chart with no positive values ignores log
  setView(view) {
    this.view = { ...this.view, ...view };
    if (this.series.length) this.drawSeries(this.series);
  }

  // several series, [{label, colour, points}], on shared axes
  drawSeries(series) {
    this.series = series;
    const described = series.filter((s) => s.points.length);
    this.svg.setAttribute("aria-label", this.describe(described));
    this.svg.replaceChildren();
    const shown = described.map((s, i) => ({
      ...s,
      colour: s.colour || COLOURS[i % COLOURS.length],
      drawn: smoothed(s.points, this.view.smoothing),
    }));
    const known = shown.flatMap((s) => s.drawn.filter(([, v]) => v !== null));
    if (known.length === 0) return;
    const log = this.view.log && known.every(([, v]) => v > 0);
    const f = log ? Math.log10 : (v) => v;
    const steps = shown.flatMap((s) => s.drawn.map(([st]) => st)), values = known.map(([, v]) => f(v));
    let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
    let [y0, y1] = [Math.min(...values), Math.max(...values)];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.1, y1 + Math.abs(y1 || 1) * 0.1]; // a constant: one tick mid-chart
    const x = (s) => LEFT + ((s - x0) / (x1 - x0)) * (WIDTH - LEFT - RIGHT);
    const y = (v) => TOP + (1 - (v - y0) / (y1 - y0)) * (HEIGHT - TOP - BOTTOM);
    this.scale = { x, x0, x1, shown, log };

    for (const v of niceTicks(y0, y1, 4)) {
      this.svg.append(el("line", { class: "grid", x1: LEFT, x2: WIDTH - RIGHT, y1: y(v), y2: y(v) }));
      this.svg.append(el("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end" }, formatValue(log ? 10 ** v : v, 3)));
    }
    const xTicks = niceTicks(x0, x1, 4).filter((s) => s === Math.round(s) || this.xName !== "step");
    for (const s of xTicks) {
      const anchor = x(s) > WIDTH - RIGHT - 20 ? "end" : "middle";
      this.svg.append(el("text", { x: x(s), y: HEIGHT - BOTTOM + 14, "text-anchor": anchor }, this.xLabel(s)));
    }
    this.svg.append(el("text", { class: "axis-title", x: (LEFT + WIDTH - RIGHT) / 2, y: HEIGHT - 4, "text-anchor": "middle" }, this.xName));
    const yTitle = `${log ? "log " : ""}${this.view.smoothing ? "smoothed " : ""}value`;
    this.svg.append(el("text", { class: "axis-title", x: 10, y: (TOP + HEIGHT - BOTTOM) / 2, "text-anchor": "middle", transform: `rotate(-90 10 ${(TOP + HEIGHT - BOTTOM) / 2})` }, yTitle));
    this.svg.append(el("line", { class: "axis", x1: LEFT, x2: LEFT, y1: TOP, y2: HEIGHT - BOTTOM }));
    this.svg.append(el("line", { class: "axis", x1: LEFT, x2: WIDTH - RIGHT, y1: HEIGHT - BOTTOM, y2: HEIGHT - BOTTOM }));

    for (const s of shown) {
      let path = "", pen = "M";
      for (const [st, v] of thinned(s.drawn)) {
        if (v === null) { pen = "M"; continue; }
        path += `${pen}${x(st).toFixed(1)},${y(f(v)).toFixed(1)}`;
        pen = "L";
      }
      const line = el("path", { class: "line", d: path, stroke: s.colour, "data-series": s.label });
      line.append(el("title", {}, s.label));
      this.svg.append(line);
      const own = s.drawn.filter(([, v]) => v !== null);
      if (own.length === 1) {
        const [st, v] = own[0];
        this.svg.append(el("circle", { cx: x(st), cy: y(f(v)), r: 3, fill: s.colour, class: "dot" }));
      }
    }
    this.cursor = el("line", { class: "cursor", x1: 0, x2: 0, y1: TOP, y2: HEIGHT - BOTTOM, visibility: "hidden" });
    this.svg.append(this.cursor);
  }

  describe(series) {
    if (series.length === 0) return `${this.name}: 0 points`;
    const latest = (s) => {
      const last = s.points[s.points.length - 1];
      return `latest ${formatValue(last[1])} at ${this.xName} ${this.xLabel(last[0])}`;
    };
    if (series.length === 1 && series[0].label === this.name) {
      return `${this.name}: ${series[0].points.length} points; ${latest(series[0])}`;
    }
    return `${this.name}: ${series.length} series; ` + series.map((s) => `${s.label}: ${s.points.length} points, ${latest(s)}`).join("; ");
  }

  // the values of every series at the step nearest the pointer, in a box under the chart
  showValuesAt(event) {
    if (!this.scale) return;
    const box = this.svg.getBoundingClientRect();
    const px = ((event.clientX - box.left) / box.width) * WIDTH;
    const { x, x0, x1, shown } = this.scale;
    const step = x0 + ((px - LEFT) / (WIDTH - LEFT - RIGHT)) * (x1 - x0);
    const rows = shown.map((s) => {
      let best = null;
      for (const point of s.drawn) if (best === null || Math.abs(point[0] - step) < Math.abs(best[0] - step)) best = point;
      return { s, best };
    });
    const nearest = rows.reduce((a, r) => (r.best && (!a || Math.abs(r.best[0] - step) < Math.abs(a - step)) ? r.best[0] : a), null);
    if (nearest === null) return;
    this.cursor.setAttribute("x1", x(nearest));
    this.cursor.setAttribute("x2", x(nearest));
    this.cursor.setAttribute("visibility", "visible");
    this.hover.replaceChildren();
    const title = document.createElement("div");
    title.textContent = `${this.xName} ${this.xLabel(nearest)}`;
    this.hover.append(title);
    for (const { s, best } of rows) {
      const row = document.createElement("div");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = s.colour;
      const value = best && best[0] === nearest ? formatValue(best[1]) : "—";
      row.append(swatch, `${s.label}: ${value}`);
      this.hover.append(row);
    }
    this.hover.hidden = false;
  }

  hideValues() {
    this.hover.hidden = true;
    this.cursor?.setAttribute("visibility", "hidden");
  }
}

// The smoothing slider and log-scale box above a page's charts: `apply(view)` gets every change.
export function chartControls(container, apply) {
  const form = document.createElement("form");
  form.className = "chart-controls";
  form.innerHTML =
    '<label>Smoothing <input type="range" name="smoothing" min="0" max="0.99" step="0.01" value="0">' +
    '<output name="shown">0</output></label>' +
    '<label><input type="checkbox" name="log"> Log scale</label>';
  form.addEventListener("submit", (event) => event.preventDefault());
  form.addEventListener("input", () => {
    const smoothing = Number(form.elements.smoothing.value);
    form.elements.shown.value = smoothing.toFixed(2);
    apply({ smoothing, log: form.elements.log.checked });
  });
  container.before(form);
  return form;
}
