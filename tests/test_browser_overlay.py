"""End to end in headless Debian Chromium (Playwright, executable_path=/usr/bin/chromium):
a host page on one origin calls a LangChain app (ChatOpenAI against the local provider
server, NascaCallbackHandler) that gets blocked; /nasca.js opens the upgrade page from
another origin in an overlay; the user picks a pack; the local Stripe stand-in completes
checkout and sends a signed webhook; the overlay reports nasca:purchased and keeps the
confirmation until the user closes it; the
next call succeeds; the funnel shows each step once. Screenshots: test-artifacts/browser/.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

pytest.importorskip("playwright")
pytest.importorskip("langchain_openai")

from langchain_openai import ChatOpenAI
from playwright.async_api import Browser, Page, async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from nasca_core import Nasca, NascaBlockedError, Tier
from nasca_core.analytics import analytics_for
from nasca_core.server import create_app
from nasca_core.testing import ProviderServer, Reply
from nasca_core.testing import Usage as ReplyUsage
from nasca_core.testing.stripe import StripeServer
from nasca_langchain import NascaCallbackHandler
from tests._webapp import (
    CHROMIUM_ARGS,
    PACKS,
    PLANS,
    WHSEC,
    LiveServer,
    artifacts,
    chromium,
    free_port,
    settings,
)

pytestmark = [
    pytest.mark.browser,
    # stripe-python 16.1's async HTTPXClient posts bytes with data=, which httpx 0.28 deprecates.
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"),
]
USER = "u_browser"
SHOTS = artifacts("browser")

HOST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Host app</title>
<style>body{font-family:system-ui,sans-serif;margin:24px;background:#f8fafc} #reply{min-height:2em}
button{font:inherit;padding:10px 16px;border-radius:8px;border:0;background:#0f172a;color:#fff}</style>
</head><body>
<h1>Acme Notes</h1>
<p>Ask the assistant a question about your notes.</p>
<button id="ask" type="button">Ask the assistant</button>
<p id="reply"></p>
<ul id="events"></ul>
<script src="__NASCA__/nasca.js"></script>
<script>
window.__events = [];
function log(type, detail) {
  window.__events.push(type);
  var li = document.createElement("li");
  li.textContent = type;
  document.getElementById("events").appendChild(li);
}
document.getElementById("ask").addEventListener("click", function () {
  document.getElementById("reply").textContent = "…";
  fetch("/api/chat", {method: "POST"}).then(function (r) {
    return r.json().then(function (body) { return {status: r.status, body: body}; });
  }).then(function (res) {
    if (res.status === 402) {
      document.getElementById("reply").textContent = res.body.message;
      window.__checkoutUrl = res.body.checkout_url;
      Nasca.open(res.body.checkout_url, {onEvent: log, closeDelay: 2500});
    } else {
      document.getElementById("reply").textContent = "Assistant: " + res.body.reply;
    }
  });
});
</script>
</body></html>"""


@dataclass
class Stack:
    nasca: Nasca
    provider: ProviderServer
    stripe: StripeServer
    nasca_url: str
    host_url: str
    other_url: str  # a host whose origin is not allowed


def host_app(nasca: Nasca, provider: ProviderServer, nasca_url: str) -> Starlette:
    llm = ChatOpenAI(model="gpt-4o-mini", base_url=provider.base_url, api_key="x", max_retries=0)
    handler = NascaCallbackHandler(nasca)

    async def page(request: Request) -> Response:
        return HTMLResponse(HOST_PAGE.replace("__NASCA__", nasca_url))

    async def chat(request: Request) -> Response:
        provider.queue(Reply(text="Your notes mention three deadlines.", usage=ReplyUsage(1200, 300)))
        try:
            msg = await llm.ainvoke("What is due this week?", config={
                "callbacks": [handler], "metadata": {"nasca_user_id": USER, "nasca_tier": "free"}})
        except NascaBlockedError as err:
            body = {"blocked": True, "message": err.upgrade_message, "checkout_url": err.checkout_url,
                    "prompt_id": err.prompt_id}
            return JSONResponse(body, status_code=402)
        return JSONResponse({"reply": msg.content})

    return Starlette(routes=[Route("/", page), Route("/api/chat", chat, methods=["POST"])])


@pytest.fixture(scope="module")
def stack() -> Iterator[Stack]:
    chromium()
    nasca_port, host_port, other_port = free_port(), free_port(), free_port()
    nasca_url, host_url = f"http://127.0.0.1:{nasca_port}", f"http://127.0.0.1:{host_port}"
    with ProviderServer() as provider, \
            StripeServer(webhook_url=f"{nasca_url}/stripe/webhook", webhook_secret=WHSEC) as stripe:
        nasca = Nasca("memory://", tiers={"free": Tier(daily="0.01", monthly="1"), "pro": Tier(monthly=10),
                                          "plus": Tier(daily="0.01", monthly="1", warn_at=(0.8,))},
                      default_tier="free", namespace="browser",
                      packs=PACKS, plans=PLANS, stripe=stripe.client(), webhook_secret=WHSEC)
        server = settings(public_url=nasca_url, allowed_origins=[host_url], app_name="Acme Notes")
        app = create_app(nasca, server)
        with LiveServer(app, nasca_port), LiveServer(host_app(nasca, provider, nasca_url), host_port), \
                LiveServer(host_app(nasca, provider, nasca_url), other_port):
            yield Stack(nasca, provider, stripe, nasca_url, host_url, f"http://127.0.0.1:{other_port}")
        nasca.close()


@pytest.fixture
async def browser(stack: Stack) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


def spend_today(nasca: Nasca, user: str) -> None:
    """Earlier usage: the user's daily allowance is gone."""
    r = nasca.reserve(Decimal("0.001"), user=user)
    nasca.settle(r, Decimal("0.02"), tokens=(20_000, 3_000))


async def shot(page: Page, name: str) -> None:
    await page.screenshot(path=str(SHOTS / f"{name}.png"))


async def events(page: Page) -> list[str]:
    result: list[str] = await page.evaluate("window.__events")
    return result


async def test_blocked_user_buys_credits_in_the_overlay_and_carries_on(stack: Stack, browser: Browser):
    n = stack.nasca
    spend_today(n, USER)
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    console: list[str] = []
    page.on("console", lambda m: console.append(m.text))
    await page.goto(stack.host_url)
    await shot(page, "01-host-page")

    # 1. The LangChain app is blocked before reaching the provider; the overlay opens.
    await page.click("#ask")
    frame = page.frame_locator("iframe[title=Upgrade]")
    await frame.get_by_text("You've reached your daily limit").wait_for()
    assert stack.provider.counts["chat.completions"] == 0
    await frame.get_by_role("button", name="Buy $5.00").wait_for()
    await shot(page, "02-overlay-blocked")

    # 2. The user picks a pack: Stripe Checkout opens in its own window (it cannot be framed).
    async with context.expect_page() as popup_info:
        await frame.get_by_role("button", name="Buy $5.00").click()
    checkout = await popup_info.value
    await checkout.wait_for_url(f"{stack.stripe.url}/c/pay/**")
    await checkout.locator("#pay").wait_for()
    await shot(checkout, "03-stripe-checkout")
    await frame.get_by_text("Complete your purchase in the checkout window.").wait_for()
    await shot(page, "04-overlay-waiting")
    assert await events(page) == ["nasca:checkout_started"]

    # 3. Pay: the stand-in sends the signed webhook, then returns to the success page, which
    #    tells the overlay and closes itself.
    closed = asyncio.ensure_future(checkout.wait_for_event("close", timeout=15_000))
    await checkout.click("#pay")
    try:
        await checkout.wait_for_url("**/success?session_id=*", timeout=5000)
        await shot(checkout, "05-success-page")
    except Exception:  # it may already have closed itself
        pass
    await closed
    delivered = stack.stripe.deliveries[-1]
    assert delivered.status == 200 and json.loads(delivered.response)["action"] == "granted"

    # 4. The overlay reports nasca:purchased and shows it until the user closes it.
    await page.wait_for_function("window.__events.includes('nasca:purchased')", timeout=15_000)
    await frame.get_by_text("You're all set.").wait_for()
    await shot(page, "06-overlay-purchased")
    await page.wait_for_timeout(3000)  # longer than the host's closeDelay: closing is the user's call
    assert await page.evaluate("Nasca.isOpen()")
    await frame.get_by_text("You're all set.").wait_for()
    await frame.get_by_role("button", name="Continue").click()
    await page.wait_for_selector("[data-nasca-overlay]", state="detached", timeout=10_000)
    assert await events(page) == ["nasca:checkout_started", "nasca:purchased", "nasca:closed"]
    await shot(page, "07-overlay-closed")

    # 5. The next call succeeds, paid by the credits.
    await page.click("#ask")
    await page.wait_for_function("document.getElementById('reply').textContent.startsWith('Assistant:')")
    await shot(page, "08-next-call-succeeds")
    assert stack.provider.counts["chat.completions"] == 1
    usage = n.get_usage(USER)
    assert usage.credit_balance < Decimal(3) and usage.month_credit_spend > 0

    # 6. The funnel: one of each step, with the pack's price as revenue.
    report = analytics_for(n).month()
    f = report.funnel
    assert counts(f) == (1, 1, 1, 1, 0)
    assert report.revenue_usd == Decimal(5) and report.orders == 1
    assert not [m for m in console if "Content Security Policy" in m]
    await context.close()


async def test_mobile_dismiss_and_origin_checks(stack: Stack, browser: Browser):
    n = stack.nasca
    user = "u_mobile"
    spend_today(n, user)
    err = None
    try:
        n.reserve(Decimal("0.001"), user=user)
    except NascaBlockedError as e:
        err = e
    assert err is not None and err.checkout_url
    before = analytics_for(n).month().funnel
    phone = {"width": 375, "height": 740}
    context = await browser.new_context(viewport=phone, is_mobile=True, has_touch=True)
    page = await context.new_page()
    await page.goto(stack.host_url)
    await page.evaluate("window.__events = []")
    await page.evaluate("url => Nasca.open(url, {onEvent: log})", err.checkout_url)
    frame_el = await page.wait_for_selector("iframe[title=Upgrade]")
    frame = await frame_el.content_frame()
    assert frame is not None
    await frame.get_by_text("You've reached your daily limit").wait_for()
    box = await frame_el.bounding_box()
    assert box is not None and box["width"] == 375  # full screen on a phone
    overflow = await frame.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0
    await shot(page, "11-mobile-overlay")

    # A message that is not from the overlay's frame and origin is ignored.
    await page.evaluate("window.postMessage({type: 'nasca:purchased'}, '*')")
    await page.wait_for_timeout(300)
    assert await events(page) == [] and await page.evaluate("Nasca.isOpen()")

    # "Not now": the page tells the host, which closes the overlay; the dismissal is recorded.
    await frame.get_by_role("button", name="Not now").click()
    await page.wait_for_selector("[data-nasca-overlay]", state="detached")
    assert await events(page) == ["nasca:dismissed", "nasca:closed"]
    for _ in range(50):
        if analytics_for(n).month().funnel.dismissed > before.dismissed:
            break
        await asyncio.sleep(0.1)
    after = analytics_for(n).month().funnel
    assert after.dismissed == before.dismissed + 1 and after.prompt_shown == before.prompt_shown + 1

    # Without a popup (blocked by the browser), the page asks the host to go to checkout itself.
    await page.evaluate("url => Nasca.open(url, {onEvent: log})", err.checkout_url)
    frame_el = await page.wait_for_selector("iframe[title=Upgrade]")
    frame = await frame_el.content_frame()
    assert frame is not None
    await frame.get_by_role("button", name="Buy $5.00").wait_for()
    await frame.evaluate("window.open = function () { return null; }")
    await frame.get_by_role("button", name="Buy $5.00").click()
    await page.wait_for_url(f"{stack.stripe.url}/c/pay/**")
    await page.goto(stack.host_url)
    await page.evaluate("window.__events = []")

    # The host can close it itself (no dismissal), and a foreign link is refused.
    await page.evaluate("url => Nasca.open(url, {onEvent: log})", err.checkout_url)
    await page.wait_for_selector("iframe[title=Upgrade]")
    await page.evaluate("Nasca.close()")
    assert not await page.evaluate("Nasca.isOpen()")
    refused = await page.evaluate("""() => { try { Nasca.open('https://evil.example/u/x'); return false; }
                                     catch (e) { return true; } }""")
    assert refused
    await context.close()

    # A page on an origin that is not allowed cannot frame the upgrade page (CSP frame-ancestors).
    context = await browser.new_context()
    page = await context.new_page()
    await page.goto(stack.other_url)
    await page.evaluate("url => Nasca.open(url)", err.checkout_url)
    await page.wait_for_selector("iframe[title=Upgrade]")
    await page.wait_for_timeout(800)
    texts = []
    for f in page.frames:
        try:
            texts.append(await f.evaluate("document.body ? document.body.innerText : ''"))
        except Exception:
            texts.append("")
    assert not any("reached your daily limit" in t for t in texts)
    await context.close()


async def test_a_warned_user_buys_from_the_overlay_before_being_blocked(stack: Stack, browser: Browser):
    n = stack.nasca
    user = "u_warned"
    n.settle(n.reserve(Decimal("0.001"), user=user, tier="plus"), Decimal("0.008"))
    r = n.reserve(Decimal("0.0005"), user=user, tier="plus")  # 80% of the day with this call
    n.settle(r, Decimal("0.0005"))
    assert r.warning is not None and r.warning.fraction == 0.8
    url = n.checkout_url_factory.url(user, "plus", r.warning.prompt_id)  # type: ignore[union-attr]
    before = analytics_for(n).month()
    context = await browser.new_context(viewport={"width": 1280, "height": 860})
    page = await context.new_page()
    await page.goto(stack.host_url)
    await page.evaluate("window.__events = []")
    await page.evaluate("url => Nasca.open(url, {reason: 'warning', onEvent: log})", url)
    frame_el = await page.wait_for_selector("iframe[title=Upgrade]")
    assert "reason=warning" in (await frame_el.get_attribute("src") or "")
    frame = page.frame_locator("iframe[title=Upgrade]")
    await frame.get_by_text("You're close to your daily limit").wait_for()
    why = frame.locator("#nasca-why")
    assert await why.get_attribute("data-state") == "warning"
    text = " ".join((await why.inner_text()).split())
    assert "You've used 85% of your daily AI allowance" in text and "keep going for now" in text
    assert "reached" not in text and "used up" not in text
    await shot(page, "12-overlay-warning")

    async with context.expect_page() as popup_info:
        await frame.get_by_role("button", name="Buy $5.00").click()
    checkout = await popup_info.value
    await checkout.wait_for_url(f"{stack.stripe.url}/c/pay/**")
    closed = asyncio.ensure_future(checkout.wait_for_event("close", timeout=15_000))
    await checkout.click("#pay")
    await closed
    await page.wait_for_function("window.__events.includes('nasca:purchased')", timeout=15_000)
    await frame.get_by_text("You're all set.").wait_for()
    assert n.get_usage(user).credit_balance == Decimal(3) and not n.get_usage(user).blocked

    # The funnel counts this conversion as warning-led, not block-led.
    after = analytics_for(n).month()
    w0, w1 = before.warning_funnel, after.warning_funnel
    assert (w1.prompt_shown - w0.prompt_shown, w1.checkout_started - w0.checkout_started,
            w1.purchase_completed - w0.purchase_completed) == (1, 1, 1)
    f0, f1 = before.funnel, after.funnel
    assert (f1.prompt_shown, f1.checkout_started, f1.purchase_completed) == (
        f0.prompt_shown, f0.checkout_started, f0.purchase_completed)
    await context.close()


@pytest.mark.slow
async def test_demo_screenshots(browser: Browser):
    """The README's pictures, from the `nasca serve --demo` data (copied to docs/img/ when
    NASCA_UPDATE_SCREENSHOTS=1)."""
    import time

    from nasca_core.server import _demo

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    store = "memory://browser-demo"
    with StripeServer(webhook_url=f"{url}/stripe/webhook", webhook_secret=WHSEC) as stripe:
        seeded = _demo.seed(store, stripe, WHSEC, time.time())
        nasca = _demo.demo_nasca(store, stripe, WHSEC)
        app = create_app(nasca, settings(public_url=url, app_name=_demo.APP_NAME))
        _demo.add_demo_routes(app, nasca)
        with LiveServer(app, port):
            context = await browser.new_context(viewport={"width": 1280, "height": 900})
            page = await context.new_page()
            await page.goto(f"{url}/admin/login")
            await page.fill("#token", settings().admin_token.get_secret_value())  # type: ignore[union-attr]
            await page.click("button[type=submit]")
            await page.wait_for_selector("#kpi-revenue")
            await page.screenshot(path=str(SHOTS / "demo-dashboard.png"), full_page=True)
            await page.goto(f"{url}/demo")
            await page.click("#ask")
            frame = page.frame_locator("iframe[title=Upgrade]")
            await frame.get_by_text("You've reached your daily limit").wait_for()
            await page.wait_for_timeout(300)
            await page.screenshot(path=str(SHOTS / "demo-overlay.png"))
            phone = await browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
            mobile = await phone.new_page()
            await mobile.goto(app.state.links.url(_demo.DEMO_USER, "free", seeded.prompts[_demo.DEMO_USER]))
            await mobile.screenshot(path=str(SHOTS / "demo-upgrade-mobile.png"))
            await phone.close()
            await context.close()
    if os.environ.get("NASCA_UPDATE_SCREENSHOTS"):
        docs = SHOTS.parents[1] / "docs" / "img"
        docs.mkdir(parents=True, exist_ok=True)
        for name in ("demo-dashboard.png", "demo-overlay.png", "demo-upgrade-mobile.png"):
            shutil.copy(SHOTS / name, docs / name)


def counts(f):
    return f.blocked, f.prompt_shown, f.checkout_started, f.purchase_completed, f.dismissed
