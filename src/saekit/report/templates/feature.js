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

  // Generated text with its line breaks and tabs made visible; a run of line breaks
  // becomes a run of marks and one break, so that 16 newlines take one line, not 16.
  function shownText(text) {
    return text.replace(/\n+/g, function (run) { return "\u21b5".repeat(run.length) + "\n"; }).replace(/\t/g, "\u21e5");
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

  // counts: bar heights; edges(i): [left, right] of bar i; tip(i): its hover text;
  // bar(i): an extra class for bar i (or "").
  function barChart(counts, edges, tip, bar, log) {
    const W = 420, H = 150, left = 36, bottom = 20, top = 8;
    const chart = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img" });
    const peak = Math.max.apply(null, counts.concat([1]));
    const width = (W - left - 4) / counts.length;
    counts.forEach(function (n, i) {
      const share = log ? Math.log1p(n) / Math.log1p(peak) : n / peak;
      const h = n ? Math.max(1, (H - bottom - top) * share) : 0;
      const rect = svg("rect", { "class": ("bar " + bar(i)).trim(), x: left + i * width + 0.5, y: H - bottom - h,
                                 width: Math.max(1, width - 1), height: h });
      const title = svg("title", {});
      title.textContent = tip(i);
      rect.appendChild(title);
      chart.appendChild(rect);
    });
    chart.appendChild(svg("line", { x1: left, x2: W - 4, y1: H - bottom, y2: H - bottom, stroke: "#999" }));
    [[0, edges(0)[0]], [counts.length, edges(counts.length - 1)[1]]].forEach(function (pair, j) {
      const label = svg("text", { x: left + pair[0] * width, y: H - 5, "text-anchor": j ? "end" : "start" });
      label.textContent = fmt(pair[1]);
      chart.appendChild(label);
    });
    const yLabel = svg("text", { x: left - 4, y: top + 8, "text-anchor": "end" });
    yLabel.textContent = peak.toLocaleString();
    chart.appendChild(yLabel);
    return chart;
  }

  function histogram(f) {
    const panel = el("div", "panel histogram");
    panel.appendChild(el("h3", "", "Activation histogram (log-spaced bins)"));
    const start = f.hist[0], counts = f.hist[1];
    if (!counts.length) { panel.appendChild(el("p", "muted", "No firings.")); return panel; }
    function edges(i) { return [config.hist_edges[start + i], config.hist_edges[start + i + 1]]; }
    panel.appendChild(barChart(counts, edges, function (i) {
      return fmt(edges(i)[0]) + " \u2264 a < " + fmt(edges(i)[1]) + ": " + counts[i].toLocaleString() + " firings";
    }, function () { return ""; }));
    return panel;
  }

  function logitHistogram(f) {
    const panel = el("div", "panel histogram logit-histogram");
    panel.appendChild(el("h3", "", "Logit weights over the vocabulary"));
    if (!f.logit_hist) { panel.appendChild(el("p", "muted", "Not computed (the report was written without the model).")); return panel; }
    const low = f.logit_hist[0], high = f.logit_hist[1], counts = f.logit_hist[2];
    const step = (high - low) / counts.length;
    function edges(i) { return [low + i * step, low + (i + 1) * step]; }
    const total = counts.reduce(function (a, b) { return a + b; }, 0);
    const up = f.promoted && f.promoted.length ? Math.min.apply(null, f.promoted.map(function (p) { return p[1]; })) : null;
    const down = f.suppressed && f.suppressed.length ? Math.max.apply(null, f.suppressed.map(function (p) { return p[1]; })) : null;
    panel.appendChild(barChart(counts, edges, function (i) {
      return fmt(edges(i)[0]) + " \u2264 w < " + fmt(edges(i)[1]) + ": " + counts[i].toLocaleString() + " tokens";
    }, function (i) {  // the bins that hold the listed promoted / suppressed tokens
      if (up !== null && edges(i)[1] >= up) return "up";
      if (down !== null && edges(i)[0] <= down) return "down";
      return "";
    }, true));
    panel.appendChild(el("p", "muted", "W_U \u00b7 norm(d) for all " + total.toLocaleString() +
      " tokens (heights on a log scale); green and red: the bins of the promoted and suppressed tokens listed above."));
    return panel;
  }

  function featureLink(shard, id) {
    const box = el("span", "nb-id");
    if (id < config.n_shown) {
      const a = el("a", "", "#" + id);
      a.href = "feature.html#" + id;
      box.appendChild(a);
    } else {
      box.textContent = "#" + id;
      box.title = "not in this report";
    }
    return box;
  }

  function neighbourList(shard, title, rows, header, cells, note) {
    const box = el("div", "neighbours");
    box.appendChild(el("h3", "", title));
    if (!rows) { box.appendChild(el("p", "muted", note)); return box; }
    if (!rows.length) { box.appendChild(el("p", "muted", "None.")); return box; }
    const table = el("table", "nb");
    const head = el("tr");
    header.forEach(function (h, i) { head.appendChild(el("th", i && i < header.length - 1 ? "num" : "", h)); });
    table.appendChild(head);
    rows.forEach(function (row) {
      const tr = el("tr");
      const idCell = el("td");
      idCell.appendChild(featureLink(shard, row[0]));
      tr.appendChild(idCell);
      cells(row).forEach(function (v) { tr.appendChild(el("td", "num", v)); });
      tr.appendChild(el("td", "nb-label", shard.labels[row[0]] === undefined ? "" : shard.labels[row[0]]));
      table.appendChild(tr);
    });
    box.appendChild(table);
    return box;
  }

  function neighbours(shard, f) {
    const panel = el("div", "panel");
    const grid = el("div", "grid2 tight");
    const note = config.co_firing_tokens ?
      "On a sample of " + config.co_firing_tokens.toLocaleString() + " stored tokens, on which this feature fired " +
      (f.co_firing_count || 0).toLocaleString() + " times. Share: the fraction of its firings where the other fired too; " +
      "Jaccard: both / either (ranked by it)." : "";
    const co = neighbourList(shard, "Co-firing features", f.co_firing, ["feature", "share", "Jaccard", ""],
      function (row) { return [row[2].toFixed(2), row[1].toFixed(2)]; },
      "Not computed (no activation store for this report).");
    co.classList.add("co-firing");
    if (note && f.co_firing) co.appendChild(el("p", "muted", note));
    grid.appendChild(co);
    const dec = neighbourList(shard, "Decoder neighbours", f.decoder, ["feature", "cosine", ""],
      function (row) { return [row[1].toFixed(3)]; }, "Not computed.");
    dec.classList.add("decoder");
    if (f.decoder) dec.appendChild(el("p", "muted", "Largest cosine similarity of the decoder directions."));
    grid.appendChild(dec);
    panel.appendChild(grid);
    return panel;
  }

  function score(value, n) {
    if (value === null || value === undefined) return "not scored";
    return value.toFixed(2) + (n ? " (n = " + n + ")" : "");
  }

  function explanation(f) {
    const e = f.explanation;
    const panel = el("div", "panel explanation");
    panel.appendChild(el("h3", "", "Explanation"));
    panel.appendChild(el("p", "explanation-text", e.text));
    const scores = el("div", "stats");
    [[score(e.detection, e.n_detection), "detection (balanced accuracy)"],
     [score(e.fuzzing, e.n_fuzzing), "fuzzing (balanced accuracy)"],
     [e.explainer || "?", "explainer"]].forEach(function (pair, i) {
      const cell = el("div", ["score-detection", "score-fuzzing", "explainer"][i]);
      cell.appendChild(el("b", "", pair[0]));
      cell.appendChild(el("span", "", pair[1]));
      scores.appendChild(cell);
    });
    panel.appendChild(scores);
    panel.appendChild(el("p", "muted", "Scored on held-out examples against random non-firing contexts; 0.5 is chance."));
    return panel;
  }

  function steering(f) {
    const s = config.steering;
    const panel = el("div", "panel steering");
    panel.appendChild(el("h3", "", "Steering"));
    panel.appendChild(el("p", "muted", "Continuations with x \u2190 x + s\u00b7d added at " + s.hook +
      " (s: the strength, d: this feature's decoder direction), beside the unsteered one."));
    s.prompts.forEach(function (prompt, p) {
      const rows = f.steering.filter(function (r) { return r[0] === p; });
      if (!rows.length) return;
      const box = el("div", "steer-prompt");
      box.appendChild(el("div", "prompt", shownText(prompt)));
      const table = el("table", "steer");
      [["unsteered", s.unsteered[p]]].concat(rows.map(function (r) {
        return ["s = " + (r[1] > 0 ? "+" : "") + r[1], r[2]];
      })).forEach(function (pair, i) {
        const tr = el("tr", i ? "steered" : "unsteered");
        tr.appendChild(el("th", "", pair[0]));
        tr.appendChild(el("td", "continuation", shownText(pair[1])));
        table.appendChild(tr);
      });
      box.appendChild(table);
      panel.appendChild(box);
    });
    if (s.max_new_tokens) panel.appendChild(el("p", "muted", "Up to " + s.max_new_tokens + " new tokens each; the prompt is not repeated."));
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

  function groups(shard, f) {
    const panel = el("div", "panel quantile-groups");
    panel.appendChild(el("h3", "", "Examples by activation quantile"));
    panel.appendChild(el("p", "muted",
      "The kept examples (top and random firings, each once), grouped at quantiles of all this feature's " +
      "firings (edges read from its histogram, to within a bin)."));
    const pool = f.top.concat(f.random);
    if (!f.groups.length) panel.appendChild(el("p", "muted", "No firings."));
    f.groups.forEach(function (g) {
      const box = el("div", "group");
      const head = el("div", "group-head");
      head.appendChild(el("b", "", "quantile " + g.q[0] + "\u2013" + g.q[1]));
      head.appendChild(el("span", "range", "activation " + fmt(g.range[0]) + "\u2013" + fmt(g.range[1])));
      head.appendChild(el("span", "muted", Math.round(100 * (g.q[1] - g.q[0])) + "% of firings \u00b7 " +
        g.members.length + (g.members.length === 1 ? " example" : " examples")));
      box.appendChild(head);
      if (!g.members.length) box.appendChild(el("p", "muted", "No kept example in this range."));
      g.members.forEach(function (i) { box.appendChild(exampleRow(shard, f, pool[i])); });
      panel.appendChild(box);
    });
    return panel;
  }

  function exampleRow(shard, f, example) {
    const row = el("div", "example");
    const act = el("div", "act", fmt(example[0]));
    if (example.length > 5 && example[5] !== null) act.appendChild(el("small", "", "q " + example[5].toFixed(2)));
    act.title = "context " + example[1] + ", position " + example[2];
    row.appendChild(act);
    row.appendChild(context(shard, f, example));
    return row;
  }

  function examples(shard, f, title, list, note) {
    const panel = el("div", "panel");
    panel.appendChild(el("h3", "", title));
    if (note) panel.appendChild(el("p", "muted", note));
    if (!list.length) panel.appendChild(el("p", "muted", "None."));
    list.forEach(function (example) { panel.appendChild(exampleRow(shard, f, example)); });
    return panel;
  }

  function render(id, shard) {
    const f = shard.features[id];
    if (!f) { showError("feature " + id + " is not in this report."); return; }
    document.title = "Feature " + id + " \u00b7 saekit";
    root.textContent = "";
    root.appendChild(el("h1", "", "Feature " + id + (f.count ? "" : " (dead)")));
    if (f.explanation) root.appendChild(explanation(f));
    root.appendChild(statsRow(f));
    const grid = el("div", "grid2");
    grid.appendChild(histogram(f));
    grid.appendChild(logits(shard, f));
    grid.appendChild(logitHistogram(f));
    grid.appendChild(neighbours(shard, f));
    root.appendChild(grid);
    if (f.steering && config.steering) root.appendChild(steering(f));
    root.appendChild(examples(shard, f, "Top activations", f.top));
    root.appendChild(groups(shard, f));
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
