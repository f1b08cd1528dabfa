// eventrouter dashboard: the little that htmx attributes do not cover.
// Loaded from /admin/static (the Content-Security-Policy allows no inline script).
(function () {
  "use strict";
  var LIVE_ROWS_KEPT = 500;

  // Defence in depth (docs/admin.md, "Escaping and the dashboard"): htmx requests only
  // the dashboard's own routes, and swaps only the HTML they answer. Anything else --
  // the query API's JSON, a redirect off /admin/, a script, plain text -- is dropped
  // with a warning, never inserted into the page as markup.
  var DASHBOARD_PREFIX = "/admin/";
  htmx.config.selfRequestsOnly = true;
  htmx.config.allowScriptTags = false;
  htmx.config.allowEval = false;
  htmx.config.historyCacheSize = 0;

  function dashboardPath(url) {
    var parsed;
    try {
      parsed = new URL(url, document.baseURI);
    } catch (e) {
      return false;
    }
    return parsed.origin === location.origin && parsed.pathname.indexOf(DASHBOARD_PREFIX) === 0;
  }

  function isHTML(xhr) {
    var type = (xhr.getResponseHeader("Content-Type") || "").split(";")[0];
    return type.trim().toLowerCase() === "text/html";
  }

  document.addEventListener("htmx:validateUrl", function (evt) {
    if (!dashboardPath(evt.detail.url.href)) {
      evt.preventDefault();
      console.warn("eventrouter: refused an htmx request outside " + DASHBOARD_PREFIX + ": " + evt.detail.url.href);
    }
  });

  document.addEventListener("htmx:beforeSwap", function (evt) {
    if (!evt.detail.shouldSwap) return; // a 204, say: nothing to judge
    var xhr = evt.detail.xhr;
    // responseURL: where the request ended, after any redirect.
    var url = xhr.responseURL || evt.detail.pathInfo.finalRequestPath;
    if (dashboardPath(url) && isHTML(xhr)) return;
    evt.detail.shouldSwap = false;
    console.warn(
      "eventrouter: not swapped: " + url + " answered " +
        (xhr.getResponseHeader("Content-Type") || "no Content-Type") +
        " (only text/html from " + DASHBOARD_PREFIX + " is swapped)"
    );
  });

  // The live tail prepends rows as they arrive: keep the page bounded.
  document.addEventListener("htmx:wsAfterMessage", function () {
    var rows = document.getElementById("live-rows");
    if (!rows) return;
    while (rows.children.length > LIVE_ROWS_KEPT) rows.lastElementChild.remove();
  });
})();
