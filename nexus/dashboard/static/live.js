// Live updates: new requests arrive over Server-Sent Events from /live and are put at the top of every
// table marked data-live="requests". No framework; the server renders each row once for all viewers.
(function () {
  "use strict";
  var tables = document.querySelectorAll('tbody[data-live="requests"]');
  var status = document.querySelector("[data-live-status]");
  if (!tables.length || !window.EventSource) return;
  var project = tables[0].getAttribute("data-live-project") || "";
  var url = "/live" + (project ? "?project_id=" + encodeURIComponent(project) : "");
  var fresh = 0;
  var counter = document.querySelector("[data-live-count]");
  var source = new EventSource(url);
  source.onopen = function () { if (status) { status.textContent = "live"; status.classList.add("on"); } };
  source.onerror = function () { if (status) { status.textContent = "live: reconnecting"; status.classList.remove("on"); } };
  source.addEventListener("request", function (event) {
    var item = JSON.parse(event.data);
    tables.forEach(function (tbody) {
      if (tbody.querySelector('tr[data-request-id="' + item.request_id + '"]')) return;
      var holder = document.createElement("tbody");
      holder.innerHTML = item.html; // rendered and escaped by the server's templates
      var row = holder.firstElementChild;
      if (!row) return;
      row.classList.add("fresh");
      tbody.insertBefore(row, tbody.firstElementChild);
      var limit = parseInt(tbody.getAttribute("data-live-limit") || "50", 10);
      while (tbody.children.length > limit) tbody.removeChild(tbody.lastElementChild);
      var empty = tbody.querySelector("td.muted[colspan]");
      if (empty) empty.parentNode.remove();
    });
    fresh += 1;
    if (counter) counter.textContent = "(" + fresh + " new since this page loaded)";
  });
})();
