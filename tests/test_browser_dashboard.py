"""The upgrade page's states and the dashboard's user pages in headless Debian Chromium
(Playwright), against a real uvicorn: within the allowance, on credits, blocked, and
blocked with nothing on offer, each in the nasca.js overlay at 1280x900 with "Not now" (or
"Close") on screen; then the owner searches a user, opens the user page, gets an inline
error for a bad grant, grants support credits and sets a tier, and the upgrade page shows
them. Screenshots: test-artifacts/browser/ (README pictures: NASCA_UPDATE_SCREENSHOTS=1).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from decimal import Decimal

import pytest

pytest.importorskip("playwright")

from playwright.async_api import Browser, Frame, Page, async_playwright
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from nasca_core import Nasca, Tier
from nasca_core.server import create_app
from nasca_core.testing.stripe import StripeServer
from tests._webapp import (
    ADMIN,
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
    pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning"),
]
SHOTS = artifacts("browser")
TIERS = {"free": Tier(daily="0.10", monthly="1"), "pro": Tier(daily=2, monthly=10)}
HOST = """<!doctype html><html><head><meta charset="utf-8"><title>Host</title></head>
<body style="font-family:system-ui;margin:24px"><h1>Acme Notes</h1>
<script src="__NASCA__/nasca.js"></script></body></html>"""


@dataclass
class Site:
    nasca: Nasca
    url: str
    host: str
    bare: Nasca  # nothing on offer
    bare_url: str


def host_app(nasca_url: str, bare_url: str) -> Starlette:
    async def page(request: Request) -> Response:
        return HTMLResponse(HOST.replace("__NASCA__", nasca_url))

    async def bare(request: Request) -> Response:
        return HTMLResponse(HOST.replace("__NASCA__", bare_url))
    return Starlette(routes=[Route("/", page), Route("/bare", bare)])


@pytest.fixture(scope="module")
def site() -> Iterator[Site]:
    chromium()
    port, bare_port, host_port = free_port(), free_port(), free_port()
    url, bare_url, host = (f"http://127.0.0.1:{p}" for p in (port, bare_port, host_port))
    with StripeServer(webhook_url=f"{url}/stripe/webhook", webhook_secret=WHSEC) as stripe:
        nasca = Nasca("memory://", tiers=TIERS, default_tier="free", namespace="bdash", packs=PACKS,
                      plans=PLANS, stripe=stripe.client(), webhook_secret=WHSEC)
        bare = Nasca("memory://", tiers=TIERS, default_tier="free", namespace="bbare")
        named = {"allowed_origins": [host], "app_name": "Acme Notes"}
        app = create_app(nasca, settings(public_url=url, **named))
        bare_app = create_app(bare, settings(public_url=bare_url, **named))
        with LiveServer(app, port), LiveServer(bare_app, bare_port), \
                LiveServer(host_app(url, bare_url), host_port):
            yield Site(nasca, url, host, bare, bare_url)
        nasca.close()
        bare.close()


@pytest.fixture
async def browser(site: Site) -> AsyncIterator[Browser]:
    async with async_playwright() as p:
        b = await p.chromium.launch(executable_path=chromium(), args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            await b.close()


def spend(nasca: Nasca, user: str, dollars: str) -> None:
    r = nasca.reserve(Decimal("0.001"), user=user)
    nasca.settle(r, Decimal(dollars), tokens=(2_000, 500))


async def overlay(page: Page, link: str) -> Frame:
    await page.evaluate("url => Nasca.open(url)", link)
    element = await page.wait_for_selector("iframe[title=Upgrade]")
    frame = await element.content_frame()
    assert frame is not None
    await frame.wait_for_selector("#nasca-why")
    return frame


async def on_screen(page: Page, frame: Frame, name: str) -> None:
    """The footer's button ``name`` is inside both the overlay's frame and the window."""
    button = frame.locator("footer.bottom").get_by_role("button", name=name, exact=True)
    box = await button.bounding_box()
    frame_box = await (await page.query_selector("iframe[title=Upgrade]")).bounding_box()  # type: ignore[union-attr]
    assert box is not None and frame_box is not None
    bottom = box["y"] + box["height"]
    assert box["y"] >= frame_box["y"] and bottom <= frame_box["y"] + frame_box["height"], name
    assert box["y"] + box["height"] <= page.viewport_size["height"]  # type: ignore[index]
    assert await button.is_visible()


async def test_upgrade_page_states_in_the_overlay_at_900px(site: Site, browser: Browser):
    n, links = site.nasca, None
    from nasca_core.server import UpgradeLinks

    links = UpgradeLinks(settings(public_url=site.url))
    spend(n, "u_within", "0.03")
    n.billing.grant_credits("u_credits", "p5", idempotency_key="cs_browser_credits")
    spend(n, "u_credits", "0.12")
    spend(n, "u_blocked", "0.11")
    spend(site.bare, "u_bare", "0.11")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(site.host)
    cases = [("u_within", site.url, "within", "Your AI usage", "Not now"),
             ("u_credits", site.url, "credits", "You're using your credits", "Not now"),
             ("u_blocked", site.url, "blocked", "You've reached your daily limit", "Not now")]
    bare_links = UpgradeLinks(settings(public_url=site.bare_url))
    for user, _, state, title, button in cases:
        frame = await overlay(page, links.url(user, "free", f"p-{user}"))
        assert await frame.get_attribute("#nasca-why", "data-state") == state
        assert await frame.inner_text("#nasca-title") == title
        await on_screen(page, frame, button)
        await page.screenshot(path=str(SHOTS / f"state-{state}.png"))
        if state == "credits":
            daily = frame.locator(".meter[data-window=daily]")
            assert await daily.get_attribute("data-on-credits") is not None
            assert "credits are paying" in await daily.inner_text()
        await frame.get_by_role("button", name=button, exact=True).click()
        await page.wait_for_selector("[data-nasca-overlay]", state="detached")
    await context.close()
    # 900 px wide as well: the overlay is narrower, the offers wrap, and "Not now" stays on screen.
    context = await browser.new_context(viewport={"width": 900, "height": 900})
    page = await context.new_page()
    await page.goto(site.host)
    frame = await overlay(page, links.url("u_blocked", "free", "p-900"))
    await on_screen(page, frame, "Not now")
    await page.screenshot(path=str(SHOTS / "state-blocked-900.png"))
    await page.goto(f"{site.host}/bare")
    frame = await overlay(page, bare_links.url("u_bare", "free", "p-bare"))
    text = await frame.inner_text("main")
    assert "You've reached your daily limit" in text and "resets" in text
    for absent in ("Buy credits", "No offers", "Secure payment", "Not now"):
        assert absent not in text, absent
    await on_screen(page, frame, "Close")
    await page.screenshot(path=str(SHOTS / "state-nothing-on-offer.png"))
    await frame.locator("footer.bottom").get_by_role("button", name="Close", exact=True).click()
    await page.wait_for_selector("[data-nasca-overlay]", state="detached")
    await context.close()


async def test_owner_finds_a_user_grants_support_credits_and_sets_a_tier(site: Site, browser: Browser):
    n = site.nasca
    spend(n, "carol-support", "0.11")
    assert n.get_usage("carol-support").blocked
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(f"{site.url}/admin/login")
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await page.wait_for_selector("#kpi-revenue")
    assert await page.locator("#economics-table tr[data-month]").count() == 6
    await page.fill("#user-search", "carol")
    await page.click("form[role=search] button")
    await page.get_by_role("link", name="carol-support").click()
    await page.wait_for_selector("#user-id")
    assert await page.inner_text("#user-id") == "carol-support"
    assert "blocked" in await page.inner_text("#user-blocked")

    # A bad amount: the same page, the message beside the form, what was typed kept.
    await page.fill("#credits-form input[name=spend]", "two dollars")
    await page.click("#credits-form button[type=submit]")
    alert = page.locator("#credits .form-error")
    await alert.wait_for()
    assert "Not granted" in await alert.inner_text()
    assert await page.input_value("#credits-form input[name=spend]") == "two dollars"
    assert n.billing.credit_lots("carol-support") == ()

    await page.fill("#credits-form input[name=spend]", "2")
    await page.click("#credits-form button[type=submit]")
    await page.wait_for_selector("#notice")
    assert "Credits granted: $2.00 of AI spend, free." in await page.inner_text("#notice")
    assert "active · free" in await page.inner_text("#lots-table")
    await page.screenshot(path=str(SHOTS / "dashboard-user.png"), full_page=True)
    assert not n.get_usage("carol-support").blocked and n.get_usage("carol-support").credit_balance == 2

    await page.select_option("#tier-form select[name=tier]", "pro")
    await page.click("#tier-form button[type=submit]")
    await page.wait_for_selector("#notice")
    assert await page.inner_text("#user-tier") == "pro"
    assert n.get_usage("carol-support").tier == "pro"
    events = n.analytics.month().events
    assert events["credits_granted"] == 1 and events["tier_set"] == 1
    await context.close()


@pytest.mark.slow
async def test_readme_screenshots_of_the_new_pages(site: Site, browser: Browser):
    """The dashboard's user page and the upgrade page on credits (docs/img/ with
    NASCA_UPDATE_SCREENSHOTS=1)."""
    n = site.nasca
    n.billing.grant_credits("dana", "p10", idempotency_key="cs_readme_dana")
    n.billing.grant_credits("dana", spend="1", paid="0", idempotency_key="support-readme")
    spend(n, "dana", "0.14")
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    await page.goto(f"{site.url}/admin/login")
    await page.fill("#token", ADMIN)
    await page.click("button[type=submit]")
    await page.goto(f"{site.url}/admin/user?id=dana")
    await page.wait_for_selector("#user-id")
    await page.screenshot(path=str(SHOTS / "demo-user.png"), full_page=True)
    from nasca_core.server import UpgradeLinks

    await page.goto(site.host)
    frame = await overlay(page, UpgradeLinks(settings(public_url=site.url)).url("dana", "free", "p-dana"))
    assert await frame.get_attribute("#nasca-why", "data-state") == "credits"
    await page.wait_for_timeout(200)
    await page.screenshot(path=str(SHOTS / "demo-upgrade-credits.png"))
    await context.close()
    if os.environ.get("NASCA_UPDATE_SCREENSHOTS"):
        docs = SHOTS.parents[1] / "docs" / "img"
        for name in ("demo-user.png", "demo-upgrade-credits.png"):
            shutil.copy(SHOTS / name, docs / name)
