/* saekit dashboard, feature page: feature.html#ID renders feature ID from its data file.

   Features are stored in shards of config.shard_size (data/shard-NNNN.js, each calling
   saekitShard(index, data)); a page loads only the shard it shows, so the dashboard stays
   fast with tens of thousands of features. Pages opened from the file system cannot
   fetch() JSON, but they can load scripts, hence JavaScript data files. All corpus text
   goes into the DOM through textContent, never as HTML. */
(function () {
  "use strict";
  const config = JSON.parse(document.getElementById("report-config").textContent);
  const shards = new Map();
  const waiting = new Map();
  const root = document.getElementById("feature");
  const SVG = "http://www.w3.org/2000/svg";

  window.saekitShard = function (index, data) {
    shards.set(index, data);
    (waiting.get(index) || []).forEach(function (done) { done(data); });
    waiting.delete(index);
  };

  function loadShard(index, done) {
    if (shards.has(index)) { done(shards.get(index)); return; }
    if (waiting.has(index)) { waiting.get(index).push(done); return; }
    waiting.set(index, [done]);
    const script = document.createElement("script");
    script.src = "data/shard-" + String(index).padStart(4, "0") + ".js";
    script.onerror = function () { showError("could not load " + script.src + "; is the report folder complete?"); };
    document.body.appendChild(script);
  }

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function showError(message) {
    root.textContent = "";
    root.appendChild(el("p", "error", message));
  }

  function fmt(x) {
    if (x === 0) return "0";
    if (Math.abs(x) >= 100) return x.toFixed(1);
    return x.toPrecision(3);
  }

  function currentId() {
    const match = location.hash.match(/^#(\d+)$/);
    return match ? Number(match[1]) : 0;
  }

  function tokenText(shard, id) {
    if (id < 0) return "";
    const text = shard.vocab[id];
    return (text === undefined ? "\u27e8" + id + "\u27e9" : text).replace(/\n/g, "\u21b5\n").replace(/\t/g, "\u21e5");
  }

  // ---- pieces of the page ------------------------------------------------------------
  function statsRow(f) {
    const box = el("div", "stats");
    const every = f.frequency > 0 ? "1 in " + Math.round(1 / f.frequency).toLocaleString() + " tokens" : "never fired";
    [[(100 * f.frequency).toPrecision(3) + "%", "firing frequency (" + every + ")"],
     [f.count.toLocaleString(), "firings on " + config.n_tokens.toLocaleString() + " tokens"],
     [fmt(f.max), "max activation"],
     [fmt(f.mean), "mean activation when firing"]].forEach(function (pair) {
      const cell = el("div");
      cell.appendChild(el("b", "", pair[0]));
      cell.appendChild(el("span", "", pair[1]));
      box.appendChild(cell);
    });
    return box;
  }

  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    Object.keys(attrs).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    return node;
  }

  function histogram(f) {
    const panel = el("div", "panel histogram");
    panel.appendChild(el("h3", "", "Activation histogram (log-spaced bins)"));
    const start = f.hist[0], counts = f.hist[1];
    if (!counts.length) { panel.appendChild(el("p", "muted", "No firings.")); return panel; }
    const W = 420, H = 150, left = 36, bottom = 20, top = 8;
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img" });
    const peak = Math.max.apply(null, counts);
    const width = (W - left - 4) / counts.length;
    counts.forEach(function (n, i) {
      const h = n ? Math.max(1, (H - bottom - top) * n / peak) : 0;
      const bar = svg("rect", { "class": "bar", x: left + i * width + 0.5, y: H - bottom - h,
                                width: Math.max(1, width - 1), height: h });
      const tip = svg("title", {});
      tip.textContent = fmt(config.hist_edges[start + i]) + " \u2264 a < " + fmt(config.hist_edges[start + i + 1]) +
        ": " + n.toLocaleString() + " firings";
      bar.appendChild(tip);
      chart.appendChild(bar);
    });
    chart.appendChild(svg("line", { x1: left, x2: W - 4, y1: H - bottom, y2: H - bottom, stroke: "#999" }));
    [[0, start], [counts.length, start + counts.length]].forEach(function (pair, j) {
      const label = svg("text", { x: left + pair[0] * width, y: H - 5, "text-anchor": j ? "end" : "start" });
      label.textContent = fmt(config.hist_edges[pair[1]]);
      chart.appendChild(label);
    });
    const yLabel = svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" });
    yLabel.textContent = peak.toLocaleString();
    chart.appendChild(yLabel);
    panel.appendChild(chart);
    return panel;
  }

  function logitList(shard, title, pairs, className) {
    const box = el("div");
    box.appendChild(el("h3", "", title));
    pairs.forEach(function (pair) {
      const row = el("div", "logit-row " + className);
      row.appendChild(el("span", "tok", tokenText(shard, pair[0]))).title = "token " + pair[0];
      row.appendChild(el("span", "val", (pair[1] > 0 ? "+" : "") + pair[1].toFixed(2)));
      box.appendChild(row);
    });
    return box;
  }

  function logits(shard, f) {
    const panel = el("div", "panel");
    if (!f.promoted) { panel.appendChild(el("p", "muted", "No logit effects were computed.")); return panel; }
    const grid = el("div", "logits");
    grid.appendChild(logitList(shard, "Promotes", f.promoted, "up"));
    grid.appendChild(logitList(shard, "Suppresses", f.suppressed, "down"));
    panel.appendChild(grid);
    panel.appendChild(el("p", "muted", "Direct effect of the decoder direction: W_U \u00b7 norm(d)."));
    return panel;
  }

  function context(shard, f, example) {
    const tokens = example[3], acts = example[4];
    const line = el("div", "ctx");
    tokens.forEach(function (id, j) {
      if (id < 0) return;
      const span = el("span", "", tokenText(shard, id));
      const a = acts[j];
      if (a > 0 && f.max > 0) span.style.backgroundColor = "rgba(255, 120, 20, " + Math.min(1, 0.12 + 0.88 * a / f.max).toFixed(3) + ")";
      if (j === config.before) span.classList.add("centre");
      if (shard.special.indexOf(id) !== -1) span.classList.add("special");
      span.title = JSON.stringify(shard.vocab[id] === undefined ? "" : shard.vocab[id]) + "  token " + id + "  activation " + fmt(a);
      line.appendChild(span);
    });
    return line;
  }

  function examples(shard, f, title, list, note) {
    const panel = el("div", "panel");
    panel.appendChild(el("h3", "", title));
    if (note) panel.appendChild(el("p", "muted", note));
    if (!list.length) panel.appendChild(el("p", "muted", "None."));
    list.forEach(function (example) {
      const row = el("div", "example");
      const act = el("div", "act", fmt(example[0]));
      if (example.length > 5 && example[5] !== null) act.appendChild(el("small", "", "q " + example[5].toFixed(2)));
      act.title = "context " + example[1] + ", position " + example[2];
      row.appendChild(act);
      row.appendChild(context(shard, f, example));
      panel.appendChild(row);
    });
    return panel;
  }

  function render(id, shard) {
    const f = shard.features[id];
    if (!f) { showError("feature " + id + " is not in this report."); return; }
    document.title = "Feature " + id + " \u00b7 saekit";
    root.textContent = "";
    root.appendChild(el("h1", "", "Feature " + id + (f.count ? "" : " (dead)")));
    root.appendChild(statsRow(f));
    const grid = el("div", "grid2");
    grid.appendChild(histogram(f));
    grid.appendChild(logits(shard, f));
    root.appendChild(grid);
    root.appendChild(examples(shard, f, "Top activations", f.top));
    root.appendChild(examples(shard, f, "Random firings", f.random,
      "A uniform sample of this feature's firings, mostly at lower quantiles; q is the fraction of firings below it."));
    document.getElementById("prev-feature").disabled = id <= 0;
    document.getElementById("next-feature").disabled = id >= config.n_shown - 1;
    document.getElementById("goto-id").value = id;
  }

  function show() {
    const id = currentId();
    if (id >= config.n_shown) { showError("feature " + id + " is not in this report (it shows features 0\u2013" + (config.n_shown - 1) + ")."); return; }
    root.textContent = "";
    root.appendChild(el("p", "loading", "Loading feature " + id + "\u2026"));
    loadShard(Math.floor(id / config.shard_size), function (shard) { if (currentId() === id) render(id, shard); });
  }

  function go(id) { if (id >= 0 && id < config.n_shown) location.hash = "#" + id; }
  document.getElementById("prev-feature").addEventListener("click", function () { go(currentId() - 1); });
  document.getElementById("next-feature").addEventListener("click", function () { go(currentId() + 1); });
  document.getElementById("goto").addEventListener("submit", function (event) {
    event.preventDefault();
    go(Number(document.getElementById("goto-id").value));
  });
  document.addEventListener("keydown", function (event) {
    if (event.target.tagName === "INPUT") return;
    if (event.key === "ArrowLeft" || event.key === "k") go(currentId() - 1);
    if (event.key === "ArrowRight" || event.key === "j") go(currentId() + 1);
  });
  window.addEventListener("hashchange", show);
  show();
})();
