// audithook web UI: optional. Every page works without it; with it, times show in the
// browser's zone too, and filtering and paging update the results in place while the URL
// stays the state (shareable, back button works).
"use strict";
(function () {
  function localTimes(root) {
    root.querySelectorAll("time[datetime]").forEach(function (t) {
      var d = new Date(t.getAttribute("datetime"));
      if (!isNaN(d)) { t.title = d.toLocaleString() + " (your time zone)"; }
    });
    root.querySelectorAll("[data-local-of]").forEach(function (s) {
      var d = new Date(s.getAttribute("data-local-of"));
      if (!isNaN(d)) { s.textContent = "· " + d.toLocaleString() + " in your time zone"; }
    });
  }
  function load(url, push) {
    return fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
      .then(function (r) { return r.text(); })
      .then(function (html) {
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.getElementById("results");
        var here = document.getElementById("results");
        if (!fresh || !here) { window.location.assign(url); return; }
        here.replaceWith(fresh);
        localTimes(fresh);
        if (push) { history.pushState({}, "", url); }
      })
      .catch(function () { window.location.assign(url); });
  }
  // Time fields take a typed time (RFC 3339, a date, epoch ms); with the script they also
  // get the browser's date-and-time picker, whose choice (read as UTC) fills the field.
  function pickers(root) {
    root.querySelectorAll("input[data-picker]").forEach(function (field) {
      var label = document.createElement("label");
      label.className = "picker";
      label.textContent = "or pick (UTC) ";
      var pick = document.createElement("input");
      pick.type = "datetime-local";
      pick.step = 1;
      pick.addEventListener("change", function () {
        if (pick.value) { field.value = pick.value.length === 16 ? pick.value + ":00Z" : pick.value + "Z"; }
      });
      label.appendChild(pick);
      field.insertAdjacentElement("afterend", label);
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    localTimes(document);
    pickers(document);
    var form = document.getElementById("filters");
    if (!form) { return; }
    form.addEventListener("submit", function (e) {
      e.preventDefault();
      var params = new URLSearchParams(new FormData(form));
      Array.from(params.keys()).forEach(function (k) { if (params.get(k) === "") { params.delete(k); } });
      // `form.action` would be the field named "action": read the attribute.
      load(form.getAttribute("action") + "?" + params.toString(), true);
    });
    document.addEventListener("click", function (e) {
      var a = e.target.closest && e.target.closest(".paging a");
      if (!a || e.ctrlKey || e.metaKey || e.shiftKey) { return; }
      e.preventDefault();
      load(a.href, true);
    });
    window.addEventListener("popstate", function () { load(window.location.href, false); });
  });
})();
