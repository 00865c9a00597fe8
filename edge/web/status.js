// The status panel: GET /metrics (Prometheus text) every couple of seconds, drawn as small SVG
// pictures: busy slots and queue depth as bars over time, tokens/s as a sparkline, prefix-cache
// hits as a ring. Counters become rates from the difference between two polls.

const SVG = "http://www.w3.org/2000/svg";
const HISTORY = 60;  // samples kept: two minutes at one poll every 2 s
const SAMPLE = /^([a-zA-Z_:][\w:]*)(?:\{([^}]*)\})?\s+(\S+)/;
const LABEL = /(\w+)="((?:[^"\\]|\\.)*)"/g;

// name -> [{labels, value}] of every sample line; # lines (HELP, TYPE) are skipped.
export function parseMetrics(text) {
  const samples = new Map();
  for (const line of text.split("\n")) {
    const match = line.match(SAMPLE);
    if (!match || line.startsWith("#")) continue;
    const labels = Object.fromEntries([...(match[2] || "").matchAll(LABEL)].map((m) => [m[1], m[2]]));
    if (!samples.has(match[1])) samples.set(match[1], []);
    samples.get(match[1]).push({ labels, value: Number(match[3]) });
  }
  return samples;
}

function total(samples, name) {
  const found = samples.get(name);
  return found ? found.reduce((sum, sample) => sum + sample.value, 0) : null;
}

function svgNode(tag, attributes) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, value);
  return node;
}

class Tile {
  constructor(parent, key, label, kind) {
    this.kind = kind;
    this.label = label;
    this.values = [];
    const box = parent.appendChild(document.createElement("div"));
    box.className = "tile";
    box.dataset.metric = key;
    const name = box.appendChild(document.createElement("div"));
    name.className = "label";
    name.textContent = label;
    this.value = box.appendChild(document.createElement("div"));
    this.value.className = "value";
    this.value.textContent = "\u2013";
    this.svg = box.appendChild(svgNode("svg", { viewBox: "0 0 120 36", preserveAspectRatio: "none", role: "img" }));
  }

  push(value, text, description) {
    this.values.push(value);
    if (this.values.length > HISTORY) this.values.shift();
    this.value.textContent = text;
    this.svg.setAttribute("aria-label", `${this.label}: ${description}`);
    this.svg.replaceChildren(...(this.kind === "ring" ? this.ring(value) : this.kind === "line" ? this.line() : this.bars()));
  }

  bars() {
    const top = Math.max(1, ...this.values);
    const width = 120 / HISTORY;
    const nodes = [svgNode("line", { class: "axis", x1: 0, y1: 35.5, x2: 120, y2: 35.5 })];
    this.values.forEach((value, i) => {
      const height = (value / top) * 34;
      const x = 120 - (this.values.length - i) * width;
      if (height > 0) nodes.push(svgNode("rect", { class: "bar", x, y: 36 - height, width: width * 0.8, height }));
    });
    return nodes;
  }

  line() {
    const top = Math.max(1, ...this.values);
    const step = 120 / (HISTORY - 1);
    const points = this.values.map((value, i) => {
      const x = 120 - (this.values.length - 1 - i) * step;
      return `${x.toFixed(1)},${(35 - (value / top) * 33).toFixed(1)}`;
    });
    if (points.length < 2) return [];
    const first = points[0].split(",")[0];
    return [svgNode("path", { class: "area", d: `M${first},36 L${points.join(" L")} L120,36 Z` }),
      svgNode("polyline", { class: "line", points: points.join(" ") })];
  }

  ring(share) {
    const radius = 14;
    const length = 2 * Math.PI * radius;
    const arc = Math.max(0, Math.min(1, share)) * length;
    const attributes = { cx: 60, cy: 18, r: radius };
    return [svgNode("circle", { ...attributes, class: "ring-bg" }),
      svgNode("circle", { ...attributes, class: "ring", "stroke-dasharray": `${arc} ${length}`,
        transform: "rotate(-90 60 18)" })];
  }
}

// Counters turned into what the last interval saw (null until two polls exist).
class Rates {
  constructor() { this.previous = null; }

  update(samples, now) {
    const current = { time: now, generated: total(samples, "edge_completion_tokens_total"),
      prompt: total(samples, "edge_prompt_tokens_total"), hits: total(samples, "edge_prefix_cache_hit_tokens_total") };
    const before = this.previous;
    this.previous = current;
    if (!before || current.generated < before.generated) return null;  // first poll, or a restarted engine
    const seconds = Math.max(0.001, (now - before.time) / 1000);
    return { tokensPerSecond: (current.generated - before.generated) / seconds,
      prompt: current.prompt - before.prompt, hits: current.hits - before.hits,
      promptTotal: current.prompt, hitsTotal: current.hits };
  }
}

function percent(share) {
  return `${Math.round(share * 100)}%`;
}

// Starts polling; `element` receives the tiles, `state` a line about reachability.
export function startStatus(element, state, intervalMs = 2000) {
  const tiles = {
    busy: new Tile(element, "busy", "Busy slots", "bars"),
    queue: new Tile(element, "queue", "Queue depth", "bars"),
    rate: new Tile(element, "rate", "Tokens/s (recent)", "line"),
    cache: new Tile(element, "cache", "Prefix-cache hits", "ring"),
  };
  const rates = new Rates();
  async function poll() {
    if (document.hidden) return;
    try {
      const response = await fetch("/metrics", { cache: "no-store" });
      if (!response.ok) throw new Error(`${response.status}`);
      const samples = parseMetrics(await response.text());
      draw(tiles, samples, rates.update(samples, performance.now()));
      const up = total(samples, "edge_engine_up");
      state.textContent = up === 0 ? "engine restarting" : "";
    } catch (error) {
      state.textContent = `metrics unavailable (${error.message})`;
    }
  }
  poll();
  return setInterval(poll, intervalMs);
}

function draw(tiles, samples, rate) {
  const busy = total(samples, "edge_busy_slots") ?? 0;
  const queue = total(samples, "edge_queue_depth") ?? 0;
  tiles.busy.push(busy, String(busy), `${busy} running now`);
  tiles.queue.push(queue, String(queue), `${queue} waiting now`);
  if (!rate) return;
  const tps = rate.tokensPerSecond;
  tiles.rate.push(tps, tps.toFixed(1), `${tps.toFixed(1)} tokens per second over the last poll`);
  // The ring shows the share of prompt tokens served from cache: recent if prompts came in, else overall.
  const [hits, prompt] = rate.prompt > 0 ? [rate.hits, rate.prompt] : [rate.hitsTotal, rate.promptTotal];
  const share = prompt > 0 ? hits / prompt : 0;
  tiles.cache.push(share, `${percent(share)} (${rate.hitsTotal} tok)`,
    `${percent(share)} of prompt tokens came from the cache; ${rate.hitsTotal} tokens in all`);
}
