/* The upgrade page (alone or inside the nasca.js overlay) and the checkout return pages.
 *
 * To its parent it posts, only to the parent origin the server checked against
 * allowed_origins: nasca:checkout_started, nasca:purchased, nasca:dismissed,
 * nasca:open_checkout (no popup: the parent opens checkout itself), nasca:close.
 * It accepts one message, nasca:checkout_returned, from its own checkout window only.
 */
(function () {
  "use strict";
  var node = document.getElementById("nasca-config");
  if (!node) { return; }
  var cfg = JSON.parse(node.textContent);
  var POLL_MS = 1500;
  var POLL_FOR_MS = 15 * 60 * 1000;

  function $(id) { return document.getElementById(id); }

  function tell(type, data) {
    if (!cfg.parentOrigin || window.parent === window) { return; }
    var message = { type: type };
    for (var k in (data || {})) { message[k] = data[k]; }
    window.parent.postMessage(message, cfg.parentOrigin);
  }

  function status(extra) {
    return fetch(cfg.statusUrl + (extra || ""), {
      headers: { Accept: "application/json" }, cache: "no-store", credentials: "same-origin"
    }).then(function (r) { return r.ok ? r.json() : null; });
  }

  if (cfg.outcome) { returned(); return; }

  var popup = null;
  var timer = null;
  var done = false;

  function buttons(disabled) {
    document.querySelectorAll("[data-nasca-offer] button[type=submit]").forEach(function (b) {
      b.disabled = disabled;
    });
  }

  function showError(text) {
    var el = $("nasca-error");
    el.textContent = text;
    el.hidden = false;
  }

  function waiting(on) {
    $("nasca-wait").hidden = !on;
    if (on) { window.scrollTo(0, 0); }
    document.body.classList.toggle("is-waiting", on);
    buttons(on);
  }

  function purchased(s) {
    if (done) { return; }
    done = true;
    stopPolling();
    waiting(false);
    buttons(true);
    document.body.classList.add("is-done");
    $("nasca-title").textContent = "Thank you!";
    $("nasca-done-text").textContent = s.blocked ? "Your purchase is recorded." :
      "You can keep going" + (s.credits && s.credits !== "$0.00" ? " (credit balance " + s.credits + ")." : ".");
    $("nasca-done").hidden = false;
    tell("nasca:purchased", { tier: s.tier, credits: s.credits });
  }

  function check() {
    return status().then(function (s) {
      if (s && (s.lots > cfg.initial.lots || s.tier !== cfg.initial.tier)) { purchased(s); }
    }).catch(function () { /* the next poll retries */ });
  }

  function startPolling() {
    if (timer) { return; }
    var started = Date.now();
    timer = setInterval(function () {
      if (Date.now() - started > POLL_FOR_MS) { stopPolling(); waiting(false); return; }
      check();
    }, POLL_MS);
  }

  function stopPolling() {
    if (timer) { clearInterval(timer); timer = null; }
  }

  document.querySelectorAll("[data-nasca-offer]").forEach(function (form) {
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      if (done) { return; }
      $("nasca-error").hidden = true;
      var item = form.querySelector("input[name=item]").value;
      // Open the window now, inside the click: after the fetch it would be a blocked popup.
      popup = window.open("", "nasca_checkout", "popup=yes,width=520,height=760");
      if (popup) {
        try { popup.document.title = "Opening checkout…"; } catch (e) { /* not ours yet */ }
      }
      buttons(true);
      fetch(cfg.checkoutUrl, {
        method: "POST", body: new URLSearchParams({ item: item }), credentials: "same-origin",
        headers: { Accept: "application/json" }
      }).then(function (r) {
        return r.json().then(function (body) { return { ok: r.ok, body: body }; });
      }).then(function (res) {
        if (!res.ok || !res.body.url) { throw new Error(res.body.error || "Checkout could not start."); }
        var url = res.body.url;
        tell("nasca:checkout_started", { item: item });
        if (popup && !popup.closed) {
          popup.location.href = url;
          waiting(true);
          startPolling();
        } else if (cfg.embedded) {
          tell("nasca:open_checkout", { url: url });
        } else {
          window.location.href = url;
        }
      }).catch(function (err) {
        if (popup && !popup.closed) { popup.close(); }
        buttons(false);
        showError(err && err.message ? err.message : "Checkout could not start.");
      });
    });
  });

  window.addEventListener("message", function (ev) {
    // Only our own checkout window, back on our own success or cancel page.
    if (ev.origin !== cfg.ownOrigin || !popup || ev.source !== popup) { return; }
    var data = ev.data || {};
    if (data.type !== "nasca:checkout_returned") { return; }
    if (data.outcome === "success") { check(); startPolling(); } else { stopPolling(); waiting(false); }
  });

  window.addEventListener("focus", function () { if (timer) { check(); } });

  function dismiss() {
    if (done) { tell("nasca:close"); return; }
    var body = JSON.stringify({ kind: "dismissed" });
    var sent = navigator.sendBeacon && navigator.sendBeacon(cfg.eventUrl, new Blob([body], { type: "text/plain" }));
    if (!sent) {
      fetch(cfg.eventUrl, { method: "POST", body: body, keepalive: true, credentials: "same-origin" })
        .catch(function () { /* best effort */ });
    }
    tell("nasca:dismissed");
    if (!cfg.embedded) {
      if (cfg.returnUrl) { window.location.href = cfg.returnUrl; } else { window.history.back(); }
    }
  }

  document.querySelectorAll("[data-nasca-dismiss]").forEach(function (b) {
    b.addEventListener("click", dismiss);
  });
  document.addEventListener("keydown", function (ev) {
    if (ev.key === "Escape" && cfg.embedded) { dismiss(); }
  });

  // --- the checkout window's return pages --------------------------------------------------
  function returned() {
    if (window.opener && !window.opener.closed) {
      try {
        window.opener.postMessage({ type: "nasca:checkout_returned", outcome: cfg.outcome }, cfg.ownOrigin);
        setTimeout(function () { window.close(); }, 400);
      } catch (e) { /* the opener went elsewhere: stay open */ }
    }
    if (cfg.outcome !== "success" || !cfg.sessionId) { return; }
    var started = Date.now();
    var progress = document.getElementById("nasca-progress");
    (function again() {
      status("?session_id=" + encodeURIComponent(cfg.sessionId)).then(function (s) {
        if (s && s.session_paid) { progress.textContent = "It's on your account: credit balance " + s.credits + "."; return; }
        if (Date.now() - started < 60000) { setTimeout(again, POLL_MS); }
        else { progress.textContent = "It will show on your account in a moment."; }
      }).catch(function () { setTimeout(again, POLL_MS * 2); });
    })();
  }
})();
