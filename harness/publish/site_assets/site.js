// The leaderboard's track tables: click a header to sort every track by that column (again to reverse), type to
// filter. Ranks (#) are given within each track, by the sorted column. Vanilla JS, no network.
// State lives in the URL hash (#sort=acc&dir=descending&q=lenet) so a reload or the back button keeps it.
(function () {
  "use strict";
  var tables = Array.prototype.slice.call(document.querySelectorAll("table.board"));
  if (!tables.length) return;
  var filter = document.getElementById("filter");
  var count = document.getElementById("count");
  var state = { key: null, dir: null };

  function headersOf(table) { return Array.prototype.slice.call(table.tHead.rows[0].cells); }

  function cellValue(row, i, type) {
    var cell = row.cells[i];
    var raw = cell.hasAttribute("data-value") ? cell.getAttribute("data-value") : cell.textContent.trim();
    if (type === "num") {
      if (raw === "") return null;
      var x = Number(raw);
      return isNaN(x) ? null : x;
    }
    return raw.toLowerCase();
  }

  function sortTable(table, key, dir) {
    var headers = headersOf(table);
    var i = headers.findIndex(function (h) { return h.getAttribute("data-key") === key; });
    if (i < 0) return;
    var type = headers[i].getAttribute("data-type") || "text";
    var tbody = table.tBodies[0];
    var keyed = Array.prototype.map.call(tbody.rows, function (row, k) {
      return { row: row, k: k, v: cellValue(row, i, type) };
    });
    keyed.sort(function (a, b) {
      if (a.v === null && b.v === null) return a.k - b.k;
      if (a.v === null) return 1; // missing values last, whichever the direction
      if (b.v === null) return -1;
      var c = a.v < b.v ? -1 : a.v > b.v ? 1 : 0;
      return (dir === "ascending" ? c : -c) || a.k - b.k;
    });
    keyed.forEach(function (item) { tbody.appendChild(item.row); });
    headers.forEach(function (h, j) { if (h.hasAttribute("aria-sort")) h.setAttribute("aria-sort", j === i ? dir : "none"); });
    if (type === "num") { // the rank within the track by this column; rows without a value have none
      var rankAt = headers.findIndex(function (h) { return h.getAttribute("data-key") === "rank"; });
      if (rankAt >= 0) {
        var rank = 0;
        keyed.forEach(function (item) { item.row.cells[rankAt].textContent = item.v === null ? "—" : String(++rank); });
      }
    }
  }

  function sortAll(key, dir, save) {
    state.key = key;
    state.dir = dir;
    tables.forEach(function (t) { sortTable(t, key, dir); });
    if (save) saveState();
  }

  function firstDirection(h) {
    // numbers: best first (data-better says which way is better); text: A to Z
    if (h.getAttribute("data-type") !== "num") return "ascending";
    return h.getAttribute("data-better") === "lower" ? "ascending" : "descending";
  }

  tables.forEach(function (table) {
    headersOf(table).forEach(function (h) {
      var button = h.querySelector("button");
      if (!button) return;
      button.addEventListener("click", function () {
        var current = h.getAttribute("aria-sort");
        var dir = current === "ascending" ? "descending" : current === "descending" ? "ascending" : firstDirection(h);
        sortAll(h.getAttribute("data-key"), dir, true);
      });
    });
  });

  function applyFilter(save) {
    var terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0, total = 0;
    tables.forEach(function (table) {
      var inTable = 0;
      Array.prototype.forEach.call(table.tBodies[0].rows, function (row) {
        var text = row.textContent.toLowerCase();
        var ok = terms.every(function (t) { return text.indexOf(t) !== -1; });
        row.hidden = !ok;
        total += 1;
        if (ok) inTable += 1;
      });
      shown += inTable;
      var section = table.closest("section.track");
      if (section) section.hidden = inTable === 0;
    });
    count.textContent = shown + " of " + total + " rows";
    if (save) saveState();
  }

  function saveState() {
    var parts = [];
    if (state.key) parts.push("sort=" + encodeURIComponent(state.key) + "&dir=" + state.dir);
    if (filter.value) parts.push("q=" + encodeURIComponent(filter.value));
    try { history.replaceState(null, "", parts.length ? "#" + parts.join("&") : location.pathname); } catch (e) { /* file:// */ }
  }

  function loadState() {
    var params = {};
    location.hash.replace(/^#/, "").split("&").forEach(function (kv) {
      var i = kv.indexOf("=");
      if (i > 0) params[kv.slice(0, i)] = decodeURIComponent(kv.slice(i + 1));
    });
    if (params.q) filter.value = params.q;
    if (params.sort) sortAll(params.sort, params.dir === "descending" ? "descending" : "ascending", false);
  }

  filter.addEventListener("input", function () { applyFilter(true); });
  loadState();
  applyFilter(false);
})();
