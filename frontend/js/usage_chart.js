// The usage page: one chart per counter (tokens trained, forward only, sampled, optimizer steps),
// one point per day of the period, drawn from the numbers embedded in the page.
import { MetricChart } from "./chart.js";

const TITLES = {
  tokens_trained: "Tokens trained per day",
  tokens_forward: "Tokens forward only per day",
  tokens_sampled: "Tokens sampled per day",
  optimizer_steps: "Optimizer steps per day",
};
const { days, series } = JSON.parse(document.getElementById("usage-series").textContent);
const container = document.getElementById("usage-charts");
const dayLabel = (i) => days[Math.min(Math.max(Math.round(i), 0), days.length - 1)].slice(5); // MM-DD

for (const [name, title] of Object.entries(TITLES)) {
  const chart = new MetricChart(container, title, { xLabel: dayLabel, xName: "day" });
  chart.figure.dataset.metric = name;
  chart.draw(series[name].map((value, i) => [i, value]));
}
