// Line charts over uPlot (vendor/uplot, pinned from npm): one x axis, a few named series.
import uPlot from "./vendor/uplot/uPlot.esm.js";

const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
                "#7f7f7f", "#bcbd22"];

export class LineChart {
  // container: element; names: series labels; options: {title, x, y, log}
  constructor(container, names, { title, x = "epoch", y = "", log = false } = {}) {
    this.container = container;
    this.names = names;
    const width = Math.max(container.clientWidth, 320);
    this.plot = new uPlot({
      title, width, height: 240,
      scales: { x: { time: false }, y: log ? { distr: 3 } : {} },
      axes: [{ label: x }, { label: y, size: 60 }],
      series: [{ label: x }, ...names.map((label, i) => ({
        label, stroke: COLORS[i % COLORS.length], width: 2, spanGaps: true,
        points: { show: true, size: 4 },
      }))],
    }, [[], ...names.map(() => [])], container);
    this.points = 0;
  }

  // xs: numbers; columns: one array per series (null where a series has no value)
  set(xs, columns) {
    this.points = xs.length;
    this.container.dataset.points = String(xs.length);
    this.plot.setData([xs, ...columns]);
  }

  destroy() {
    this.plot.destroy();
  }
}
