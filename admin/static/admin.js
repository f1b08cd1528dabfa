// eventrouter dashboard: the little that htmx attributes do not cover.
// Loaded from /admin/static (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  var LIVE_ROWS_KEPT = 500;

  // The live tail prepends rows as they arrive: keep the page bounded.
  document.addEventListener("htmx:wsAfterMessage", function () {
    var rows = document.getElementById("live-rows");
    if (!rows) return;
    while (rows.children.length > LIVE_ROWS_KEPT) rows.lastElementChild.remove();
  });
})();
