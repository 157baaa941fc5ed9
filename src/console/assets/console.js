// Stepwise console: local times (UTC on hover) and live refreshes from the server's event
// stream (docs/console.md). Everything else is plain HTML forms and htmx attributes.
(function () {
  "use strict";
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function localize(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var iso = t.getAttribute("datetime");
      var d = new Date(iso);
      if (isNaN(d.getTime())) { return; }
      t.title = "UTC " + iso.replace("T", " ").replace(/\.\d+/, "").replace("Z", "").replace("+00:00", "");
      t.textContent = d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
        pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
      t.setAttribute("data-local", "1");
    });
  }
  function connect(url) {
    if (!window.EventSource) { return; }
    var source = new EventSource(url);
    source.addEventListener("saga", function (e) {
      document.body.dispatchEvent(new CustomEvent("saga-changed", { detail: e.data }));
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    localize(document);
    var live = document.querySelector("[data-live-source]");
    if (live) { connect(live.getAttribute("data-live-source")); }
  });
  document.addEventListener("htmx:afterSwap", function (e) { localize(e.target); });
})();
