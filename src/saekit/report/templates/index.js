/* saekit dashboard, overview page: the searchable, sortable, paged feature table.
   Rows come from the JSON embedded in the page; every piece of corpus text is put into
   the DOM with textContent, never parsed as HTML. */
(function () {
  "use strict";
  const PAGE = 50;
  const index = JSON.parse(document.getElementById("feature-index").textContent);
  const columns = index.columns;
  const rows = index.rows.map(function (r) {
    const row = {};
    columns.forEach(function (name, i) { row[name] = r[i]; });
    row.text = row.top.concat(row.promoted, [row.explanation || ""]).join("\u0000").toLowerCase();
    return row;
  });
  const state = { query: "", hideDead: true, key: "id", descending: false, page: 0 };
  const body = document.querySelector("#feature-table tbody");
  const search = document.getElementById("search");
  const hideDead = document.getElementById("hide-dead");
  const explained = index.explained > 0;
  const maxLogFrequency = Math.max.apply(null, rows.map(function (r) { return r.frequency; }).concat([1e-12]));

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function shown(token) { return token.replace(/\n/g, "\u21b5").replace(/\t/g, "\u21e5"); }

  function chips(tokens, className) {
    const box = el("div", "chips");
    tokens.forEach(function (t) { box.appendChild(el("span", "chip " + className, shown(t))); });
    return box;
  }

  function fmt(x) {
    if (x === 0) return "0";
    if (Math.abs(x) >= 100) return x.toFixed(0);
    return x.toPrecision(3);
  }

  function percent(f) {
    if (f === 0) return "0%";
    return (100 * f < 0.01 ? (100 * f).toExponential(1) : (100 * f).toPrecision(2)) + "%";
  }

  function matches(row, query) {
    if (!query) return true;
    const id = query.match(/^#?(\d+)$/);
    if (id && row.id === Number(id[1])) return true;
    if (query.charAt(0) === "#") return false;
    return row.text.indexOf(query) !== -1;
  }

  function render() {
    const query = state.query.trim().toLowerCase();
    let list = rows.filter(function (r) { return (!state.hideDead || r.count > 0) && matches(r, query); });
    list.sort(function (a, b) {
      const x = a[state.key], y = b[state.key];
      if (x === null || y === null) return x === y ? a.id - b.id : (x === null ? 1 : -1); // unscored last, by id
      const d = x - y || a.id - b.id;
      return state.descending ? -d : d;
    });
    const pages = Math.max(1, Math.ceil(list.length / PAGE));
    state.page = Math.min(state.page, pages - 1);
    body.textContent = "";
    list.slice(state.page * PAGE, (state.page + 1) * PAGE).forEach(function (r) {
      const tr = el("tr", r.count > 0 ? "" : "dead");
      const link = el("a", "", "#" + r.id);
      link.href = "feature.html#" + r.id;
      const idCell = el("td", "num");
      idCell.appendChild(link);
      tr.appendChild(idCell);
      const freq = el("td", "num");
      const bar = el("span", "freqbar");
      const logRatio = r.frequency > 0 ? Math.log10(r.frequency / maxLogFrequency) : -Infinity;
      bar.style.width = Math.max(0, 60 + 10 * logRatio) + "px"; // 10 px per decade below the densest
      freq.appendChild(bar);
      freq.appendChild(document.createTextNode(percent(r.frequency)));
      tr.appendChild(freq);
      tr.appendChild(el("td", "num", fmt(r.max)));
      tr.appendChild(el("td", "num", fmt(r.mean)));
      const top = el("td");
      top.appendChild(chips(r.top, ""));
      tr.appendChild(top);
      const up = el("td");
      up.appendChild(chips(r.promoted, "up"));
      tr.appendChild(up);
      if (explained) {
        tr.appendChild(el("td", "explanation", r.explanation === null ? "" : r.explanation));
        tr.appendChild(el("td", "num score", r.detection === null ? "\u2013" : r.detection.toFixed(2)));
        tr.appendChild(el("td", "num score", r.fuzzing === null ? "\u2013" : r.fuzzing.toFixed(2)));
      }
      body.appendChild(tr);
    });
    document.getElementById("match-count").textContent =
      list.length.toLocaleString() + " of " + rows.length.toLocaleString() + " features";
    document.getElementById("page-label").textContent = "page " + (state.page + 1) + " of " + pages;
    document.getElementById("page-prev").disabled = state.page === 0;
    document.getElementById("page-next").disabled = state.page >= pages - 1;
    document.querySelectorAll("#feature-table th[data-key]").forEach(function (th) {
      const on = th.dataset.key === state.key;
      th.classList.toggle("sorted", on);
      th.classList.toggle("asc", on && !state.descending);
    });
  }

  search.addEventListener("input", function () { state.query = search.value; state.page = 0; render(); });
  hideDead.addEventListener("change", function () { state.hideDead = hideDead.checked; state.page = 0; render(); });
  document.getElementById("page-prev").addEventListener("click", function () { state.page -= 1; render(); });
  document.getElementById("page-next").addEventListener("click", function () { state.page += 1; render(); });
  document.querySelectorAll("#feature-table th[data-key]").forEach(function (th) {
    th.addEventListener("click", function () {
      if (state.key === th.dataset.key) state.descending = !state.descending;
      else { state.key = th.dataset.key; state.descending = th.dataset.key !== "id"; }
      render();
    });
  });
  render();
})();
