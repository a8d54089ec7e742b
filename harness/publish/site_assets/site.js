// The leaderboard table: click a header to sort (again to reverse), type to filter. Vanilla JS, no network.
// State lives in the URL hash (#sort=acc&dir=descending&q=lenet) so a reload or the back button keeps it.
(function () {
  "use strict";
  var table = document.getElementById("board");
  if (!table) return;
  var tbody = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  var filter = document.getElementById("filter");
  var count = document.getElementById("count");

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

  function sortBy(i, dir, save) {
    var type = headers[i].getAttribute("data-type") || "text";
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
    headers.forEach(function (h, j) { h.setAttribute("aria-sort", j === i ? dir : "none"); });
    if (save) saveState();
  }

  function firstDirection(h) {
    // numbers: best first (data-better says which way is better); text: A to Z
    if (h.getAttribute("data-type") !== "num") return "ascending";
    return h.getAttribute("data-better") === "lower" ? "ascending" : "descending";
  }

  headers.forEach(function (h, i) {
    var button = h.querySelector("button");
    if (!button) return;
    button.addEventListener("click", function () {
      var current = h.getAttribute("aria-sort");
      var dir = current === "ascending" ? "descending" : current === "descending" ? "ascending" : firstDirection(h);
      sortBy(i, dir, true);
    });
  });

  function applyFilter(save) {
    var terms = filter.value.toLowerCase().split(/\s+/).filter(Boolean);
    var shown = 0;
    Array.prototype.forEach.call(tbody.rows, function (row) {
      var text = row.textContent.toLowerCase();
      var ok = terms.every(function (t) { return text.indexOf(t) !== -1; });
      row.hidden = !ok;
      if (ok) shown += 1;
    });
    count.textContent = shown + " of " + tbody.rows.length + " rows";
    if (save) saveState();
  }

  function saveState() {
    var parts = [];
    headers.forEach(function (h) {
      var s = h.getAttribute("aria-sort");
      if (s && s !== "none") parts.push("sort=" + encodeURIComponent(h.getAttribute("data-key")) + "&dir=" + s);
    });
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
    if (params.sort) {
      headers.forEach(function (h, i) {
        if (h.getAttribute("data-key") === params.sort) {
          sortBy(i, params.dir === "descending" ? "descending" : "ascending", false);
        }
      });
    }
  }

  filter.addEventListener("input", function () { applyFilter(true); });
  loadState();
  applyFilter(false);
})();
