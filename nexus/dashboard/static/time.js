// Times: the server writes each one in UTC as <time datetime="...Z"> (render.when); here it is shown in
// the browser's time zone, with the UTC time on hover. Rows that arrive live (live.js) are converted
// too, and an empty list's advice is removed once a live row arrives. No framework, no CDN: the
// dashboard's Content-Security-Policy allows scripts from 'self' only.
(function () {
  "use strict";
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function local(d) {
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }
  function convert(root) {
    if (!root.querySelectorAll) return;
    var found = root.matches && root.matches("time[datetime]") ? [root] : [];
    root.querySelectorAll("time[datetime]").forEach(function (el) { found.push(el); });
    found.forEach(function (el) {
      if (el.hasAttribute("data-local")) return;
      var d = new Date(el.getAttribute("datetime"));
      if (isNaN(d.getTime())) return;
      el.title = el.textContent + " UTC";
      el.textContent = local(d);
      el.setAttribute("data-local", "");
    });
  }
  convert(document);
  var zone = "";
  try { zone = Intl.DateTimeFormat().resolvedOptions().timeZone || ""; } catch (e) { zone = ""; }
  document.querySelectorAll("[data-time-zone]").forEach(function (el) { el.textContent = zone || "local time"; });
  if (!window.MutationObserver) return;
  new MutationObserver(function (records) {
    records.forEach(function (record) {
      record.addedNodes.forEach(function (node) {
        if (node.nodeType !== 1) return;
        convert(node);
        if (node.parentNode && node.parentNode.hasAttribute && node.parentNode.hasAttribute("data-live")) {
          document.querySelectorAll(".empty").forEach(function (el) { el.remove(); });
        }
      });
    });
  }).observe(document.body, { childList: true, subtree: true });
})();
