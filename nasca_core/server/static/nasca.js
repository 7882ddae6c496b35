/* Nasca overlay: open the upgrade page over your page, in an iframe.
 *
 *   <script src="https://your.app/nasca/nasca.js"></script>
 *   Nasca.open(err.checkout_url, { onEvent: function (type, detail) { ... } });
 *   Nasca.open(warningUrl, { reason: "warning" });   // at a soft threshold: "near your limit"
 *
 * Events (to onEvent, and as CustomEvents on window): "nasca:checkout_started",
 * "nasca:purchased" (the confirmation stays until the user closes it; closeOnPurchase: true
 * closes it after closeDelay ms),
 * "nasca:dismissed", "nasca:closed". Nasca.close() closes it from your code.
 * Messages are accepted only from the overlay's iframe and from this script's origin;
 * the page inside posts only to your origin, and only if the server allows it.
 */
(function () {
  "use strict";
  if (window.Nasca && window.Nasca.open) { return; }
  var script = document.currentScript;
  var ORIGIN = new URL(script ? script.src : location.href, location.href).origin;
  var FROM_PAGE = { "nasca:checkout_started": 1, "nasca:purchased": 1, "nasca:dismissed": 1,
    "nasca:open_checkout": 1, "nasca:close": 1 };
  var current = null;

  function emit(c, type, detail) {
    if (c.options.onEvent) {
      try { c.options.onEvent(type, detail); } catch (e) { setTimeout(function () { throw e; }); }
    }
    window.dispatchEvent(new CustomEvent(type, { detail: detail }));
  }

  function style(el, props) { for (var k in props) { el.style[k] = props[k]; } }

  function open(url, options) {
    var target = new URL(url, location.href);
    if (target.origin !== ORIGIN || !/\/u\/[^/]+$/.test(target.pathname)) {
      throw new Error("Nasca.open() takes an upgrade link of " + ORIGIN);
    }
    close("replaced");
    target.searchParams.set("parent", location.origin);
    if (options && options.reason === "warning") { target.searchParams.set("reason", "warning"); }
    var narrow = window.matchMedia("(max-width: 600px)").matches;
    var backdrop = document.createElement("div");
    backdrop.setAttribute("data-nasca-overlay", "");
    style(backdrop, { position: "fixed", inset: "0", zIndex: "2147483000", display: "flex",
      alignItems: "center", justifyContent: "center", background: "rgba(17, 19, 33, 0.55)" });
    var frame = document.createElement("iframe");
    frame.src = target.href;
    frame.title = "Upgrade";
    frame.setAttribute("allow", "payment");
    style(frame, { border: "0", background: "#fff", width: narrow ? "100%" : "min(600px, calc(100% - 32px))",
      height: narrow ? "100%" : "min(820px, calc(100% - 32px))", borderRadius: narrow ? "0" : "16px",
      boxShadow: "0 24px 80px rgba(0, 0, 0, 0.35)" });
    backdrop.appendChild(frame);
    if (!narrow) {
      var x = document.createElement("button");
      x.type = "button";
      x.textContent = "\u00d7";
      x.setAttribute("aria-label", "Close");
      style(x, { position: "absolute", top: "12px", right: "16px", width: "36px", height: "36px",
        borderRadius: "18px", border: "0", background: "rgba(255,255,255,0.92)", color: "#1f2233",
        fontSize: "22px", cursor: "pointer", lineHeight: "36px", padding: "0", textAlign: "center" });
      x.addEventListener("click", function () { dismissFromHost(); });
      backdrop.appendChild(x);
    }
    backdrop.addEventListener("click", function (ev) { if (ev.target === backdrop) { dismissFromHost(); } });
    var c = {
      backdrop: backdrop, frame: frame, options: options || {}, purchased: false,
      eventUrl: target.origin + target.pathname + "/event", focus: document.activeElement,
      overflow: document.documentElement.style.overflow
    };
    current = c;
    window.addEventListener("message", onMessage);
    document.addEventListener("keydown", onKey);
    document.documentElement.style.overflow = "hidden";
    document.body.appendChild(backdrop);
    frame.focus();
    return { close: function () { if (current === c) { close("closed"); } }, frame: frame };
  }

  function onMessage(ev) {
    var c = current;
    if (!c || ev.origin !== ORIGIN || ev.source !== c.frame.contentWindow) { return; }
    var data = ev.data;
    if (!data || typeof data.type !== "string" || !FROM_PAGE[data.type]) { return; }
    if (data.type === "nasca:open_checkout") {
      // No popup allowed: leave for checkout in this tab (Stripe's page cannot be framed).
      var u = new URL(String(data.url));
      if (u.protocol === "https:" || u.protocol === "http:") { location.assign(u.href); }
      return;
    }
    if (data.type === "nasca:close") { close(c.purchased ? "purchased" : "closed"); return; }
    emit(c, data.type, data);
    if (data.type === "nasca:dismissed") { close("dismissed"); }
    if (data.type === "nasca:purchased") {
      c.purchased = true;
      // The confirmation stays until the user dismisses it ("Continue"): closing on a
      // timer took it away before it could be read. closeOnPurchase: true restores that.
      if (c.options.closeOnPurchase === true) {
        var delay = c.options.closeDelay == null ? 1500 : c.options.closeDelay;
        setTimeout(function () { if (current === c) { close("purchased"); } }, delay);
      }
    }
  }

  function onKey(ev) { if (ev.key === "Escape") { dismissFromHost(); } }

  function dismissFromHost() {
    var c = current;
    if (!c) { return; }
    if (!c.purchased) {
      var body = JSON.stringify({ kind: "dismissed" });
      var sent = navigator.sendBeacon && navigator.sendBeacon(c.eventUrl, new Blob([body], { type: "text/plain" }));
      if (!sent) {
        fetch(c.eventUrl, { method: "POST", body: body, mode: "no-cors", keepalive: true })
          .catch(function () { /* best effort */ });
      }
      emit(c, "nasca:dismissed", { type: "nasca:dismissed", source: "host" });
    }
    close(c.purchased ? "purchased" : "dismissed");
  }

  function close(reason) {
    var c = current;
    if (!c) { return; }
    current = null;
    window.removeEventListener("message", onMessage);
    document.removeEventListener("keydown", onKey);
    c.backdrop.remove();
    document.documentElement.style.overflow = c.overflow;
    if (c.focus && c.focus.focus) { try { c.focus.focus(); } catch (e) { /* gone */ } }
    emit(c, "nasca:closed", { type: "nasca:closed", reason: reason });
  }

  window.Nasca = {
    open: open,
    close: function () { close("closed"); },
    isOpen: function () { return current !== null; },
    origin: ORIGIN
  };
})();
