// A small SVG line chart of one metric over steps. No library: axes with a few ticks, one line,
// gaps where a value is missing (JSON has no NaN), and an aria-label that states the latest value.
const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 400, HEIGHT = 200, LEFT = 64, RIGHT = 12, TOP = 10, BOTTOM = 28;
const MAX_DRAWN = 1500; // beyond this many points a line is thinned (the last point is always kept)

const el = (name, attrs = {}, text) => {
  const node = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
};

export const formatValue = (v, digits = 4) => (v === null ? "—" : Number(v.toPrecision(digits)).toString());

const ticks = (low, high, count) =>
  Array.from({ length: count }, (_, i) => low + ((high - low) * i) / (count - 1));

const thinned = (points) => {
  if (points.length <= MAX_DRAWN) return points;
  const stride = Math.ceil(points.length / MAX_DRAWN);
  const kept = points.filter((_, i) => i % stride === 0);
  if (kept[kept.length - 1] !== points[points.length - 1]) kept.push(points[points.length - 1]);
  return kept;
};

export class MetricChart {
  // options.xLabel(x) names a tick of the x axis (default: the step number); options.xName is the
  // x axis's word in the aria-label ("step" by default)
  constructor(container, name, options = {}) {
    this.name = name;
    this.xLabel = options.xLabel || ((s) => String(Math.round(s)));
    this.xName = options.xName || "step";
    this.figure = document.createElement("figure");
    this.figure.className = "chart";
    this.figure.dataset.metric = name;
    const caption = document.createElement("figcaption");
    caption.textContent = name;
    this.svg = el("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img" });
    this.figure.append(caption, this.svg);
    container.append(this.figure);
  }

  draw(points) {
    const known = points.filter(([, v]) => v !== null);
    const last = points[points.length - 1];
    this.svg.setAttribute(
      "aria-label",
      `${this.name}: ${points.length} points; latest ${formatValue(last[1])} at ${this.xName} ${this.xLabel(last[0])}`,
    );
    this.svg.replaceChildren();
    if (known.length === 0) return;
    const steps = points.map(([s]) => s), values = known.map(([, v]) => v);
    let [x0, x1] = [Math.min(...steps), Math.max(...steps)];
    let [y0, y1] = [Math.min(...values), Math.max(...values)];
    if (x0 === x1) [x0, x1] = [x0 - 1, x1 + 1];
    if (y0 === y1) [y0, y1] = [y0 - Math.abs(y0 || 1) * 0.05, y1 + Math.abs(y1 || 1) * 0.05];
    const x = (s) => LEFT + ((s - x0) / (x1 - x0)) * (WIDTH - LEFT - RIGHT);
    const y = (v) => TOP + (1 - (v - y0) / (y1 - y0)) * (HEIGHT - TOP - BOTTOM);

    for (const v of ticks(y0, y1, 4)) {
      this.svg.append(el("line", { class: "grid", x1: LEFT, x2: WIDTH - RIGHT, y1: y(v), y2: y(v) }));
      this.svg.append(el("text", { x: LEFT - 6, y: y(v) + 4, "text-anchor": "end" }, formatValue(v, 3)));
    }
    ticks(x0, x1, 3).forEach((s, i) => {
      const anchor = i === 2 ? "end" : "middle"; // the last label ends at the axis's end, inside the chart
      this.svg.append(el("text", { x: x(s), y: HEIGHT - 8, "text-anchor": anchor }, this.xLabel(s)));
    });
    this.svg.append(el("line", { class: "axis", x1: LEFT, x2: LEFT, y1: TOP, y2: HEIGHT - BOTTOM }));
    this.svg.append(el("line", { class: "axis", x1: LEFT, x2: WIDTH - RIGHT, y1: HEIGHT - BOTTOM, y2: HEIGHT - BOTTOM }));

    let path = "", pen = "M";
    for (const [s, v] of thinned(points)) {
      if (v === null) { pen = "M"; continue; }
      path += `${pen}${x(s).toFixed(1)},${y(v).toFixed(1)}`;
      pen = "L";
    }
    this.svg.append(el("path", { class: "line", d: path }));
    if (known.length === 1) {
      const [s, v] = known[0];
      this.svg.append(el("circle", { cx: x(s), cy: y(v), r: 3, fill: "currentColor", class: "line" }));
    }
  }
}
