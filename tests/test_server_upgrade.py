"""The end user's routes over HTTP (httpx on the ASGI app): the signed upgrade page, its
403s, checkout through the local Stripe server, status, the dismiss beacon, the return
pages, the overlay script, mounting under a prefix."""

from __future__ import annotations

import logging
import re
import time
from decimal import Decimal

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

from nasca_core import ConfigurationError, Tier
from nasca_core.analytics import analytics_for
from nasca_core.server import ServerSettings, UpgradeLinks, create_app
from nasca_core.server._links import UpgradeToken, sign, verify
from nasca_core.testing.stripe import StripeServer
from tests._webapp import PUBLIC, SECRET, WHSEC, billed, block, client, settings

# stripe-python 16.1's async HTTPXClient posts bytes with data=, which httpx 0.28 deprecates.
pytestmark = pytest.mark.filterwarnings("ignore:Use 'content=<...>' to upload raw bytes:DeprecationWarning")

ORIGIN = {"Origin": PUBLIC}
JSON = {"Accept": "application/json"}


@pytest.fixture
def stripe_server():
    with StripeServer(webhook_secret=WHSEC) as srv:
        yield srv


@pytest.fixture
def memory_nasca(make_nasca, stripe_server):
    return billed(make_nasca, stripe_server.client())


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_blocked_user_gets_a_signed_page_with_usage_offers_and_why(memory_nasca, clock):
    n = memory_nasca
    app = create_app(n, settings())
    err = block(n, "ann")
    assert err.checkout_url and err.checkout_url.startswith(f"{PUBLIC}/u/")  # create_app installed the links
    async with client(app) as c:
        r = await c.get(err.checkout_url)
    assert r.status_code == 200
    page = r.text
    assert "You've reached your daily limit" in page and "<b>free</b> plan" in page
    assert "It resets <b>in 12 h</b>" in page and "(Nov 19 at 00:00 UTC)" in page
    assert 'data-window="daily"' in page and 'data-window="monthly"' in page
    assert 'data-percent="1' in page  # the daily bar is full (100% or more)
    for shown in ("$5.00", "$3.00 of AI usage", "Credit pack", "$10.00", "€4.50", "$20.00", "/month",
                  "$2.00 a day · $10.00 a month of AI usage"):
        assert shown in page, shown
    assert 'name="item" value="p5"' in page and 'name="item" value="pro"' in page
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'self'" in csp and "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert r.headers["referrer-policy"] == "same-origin" and r.headers["cache-control"] == "no-store"
    assert "x-frame-options" not in r.headers  # frameable by allowed origins only (CSP)
    report = analytics_for(n).month()
    assert report.funnel.blocked == 1 and report.funnel.prompt_shown == 1


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_tampered_expired_or_foreign_links_get_the_same_403(memory_nasca, clock):
    n = memory_nasca
    app = create_app(n, settings(link_ttl=600))
    links = app.state.links
    good = links.token("user-ann-7", "free", "p1")
    payload, mac = good.split(".")
    forged = sign(UpgradeToken("user-bo-9", "free", "p1", int(clock.now) + 600), b"x" * 32).split(".")[0]
    other_secret = sign(UpgradeToken("user-ann-7", "free", "p1", int(clock.now) + 600),
                        b"another-secret-0123456789")
    flipped = mac[:-2] + ("AA" if mac[-2:] != "AA" else "QQ")  # always a different MAC
    bad = [f"{payload}.{flipped}", f"{forged}.{mac}", other_secret, "garbage", "a.b", "",
           good + "x", payload]
    async with client(app) as c:
        assert (await c.get(f"/u/{good}")).status_code == 200
        bodies = set()
        for token in bad:
            r = await c.get(f"/u/{token}")
            assert r.status_code in (403, 404), token  # "" is no route at all
            if r.status_code == 403:
                bodies.add(r.text)
                assert "user-ann-7" not in r.text and "user-bo-9" not in r.text
        clock.advance(601)
        expired = await c.get(f"/u/{good}")
        assert expired.status_code == 403
        bodies.add(expired.text)
        assert len(bodies) == 1  # expired and forged look the same
        for path in ("status", "success", "cancel"):
            assert (await c.get(f"/u/{good}/{path}")).status_code == 403
        assert (await c.post(f"/u/{good}/checkout", data={"item": "p5"}, headers=ORIGIN)).status_code == 403
        assert (await c.post(f"/u/{good}/event", content=b'{"kind":"dismissed"}')).status_code == 403
        status = await c.get(f"/u/{good}/status")
        assert status.json() == {"error": "forbidden"}
    assert analytics_for(n).month().events["dismissed"] == 0


def test_links_verify_with_rotated_secrets_and_reject_at_expiry():
    now = time.time()
    old = ServerSettings(secret="old-secret-0123456789", public_url=PUBLIC)
    new = ServerSettings(secret="new-secret-0123456789", previous_secrets=["old-secret-0123456789"],
                         public_url=PUBLIC)
    token = UpgradeLinks(old).token("ann", ttl=60)
    assert verify(token, new.secrets, now) == verify(token, old.secrets, now) != None  # noqa: E711
    assert verify(token, (b"new-secret-0123456789",), now) is None
    assert verify(token, old.secrets, now + 61) is None
    url = UpgradeLinks(new).url("u/ü 1", "pro", "prompt-9")
    parsed = verify(url.rsplit("/", 1)[1], new.secrets, now)
    assert parsed is not None
    assert (parsed.user_id, parsed.tier, parsed.prompt_id) == ("u/ü 1", "pro", "prompt-9")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_checkout_starts_stripe_and_the_webhook_completes_it(memory_nasca, stripe_server):
    n = memory_nasca
    app = create_app(n, settings(allowed_origins=["https://host.example"]))
    err = block(n, "ann")
    url = err.checkout_url
    async with client(app) as c:
        await c.get(url)
        r = await c.post(f"{url}/checkout", data={"item": "p5"}, headers={**ORIGIN, **JSON})
        assert r.status_code == 200
        checkout = r.json()["url"]
        assert checkout.startswith(stripe_server.url + "/c/pay/cs_test_")
        sent = stripe_server.checkout_requests[-1].params
        assert sent["metadata"]["nasca_user_id"] == "ann"
        assert sent["metadata"]["nasca_prompt_id"] == err.prompt_id
        assert sent["success_url"] == f"{url}/success?session_id={{CHECKOUT_SESSION_ID}}"
        assert sent["cancel_url"] == f"{url}/cancel"
        # without JSON, the form's POST redirects to Stripe
        r = await c.post(f"{url}/checkout", data={"item": "pro"}, headers=ORIGIN)
        assert r.status_code == 303 and r.headers["location"].startswith(stripe_server.url)
        before = (await c.get(f"{url}/status")).json()
        assert before == {"lots": 0, "tier": "free", "blocked": True, "credits": "$0.00",
                          "session_paid": False}
        session_id = checkout.rsplit("/", 1)[1]
        signed = stripe_server.complete_session(session_id, deliver=False)
        hook = await c.post("/stripe/webhook", content=signed.payload, headers=signed.headers)
        assert hook.status_code == 200 and hook.json()["action"] == "granted"
        after = (await c.get(f"{url}/status", params={"session_id": session_id})).json()
        assert after["lots"] == 1 and after["session_paid"] and after["credits"] == "$5.00"
        success = await c.get(f"{url}/success", params={"session_id": session_id})
        assert success.status_code == 200 and "Thank you!" in success.text
        assert '"outcome": "success"' in success.text and session_id in success.text
        cancel = await c.get(f"{url}/cancel")
        assert cancel.status_code == 200 and "Nothing was charged" in cancel.text
    f = analytics_for(n).month().funnel
    assert (f.blocked, f.prompt_shown, f.checkout_started, f.purchase_completed) == (1, 1, 1, 1)
    assert analytics_for(n).month().revenue_usd == Decimal(5)
    n.reserve(Decimal("0.01"), user="ann")  # the credits admit the next call


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_checkout_refusals(make_nasca, stripe_server):
    no_stripe = billed(make_nasca)
    app = create_app(no_stripe, settings())
    url = block(no_stripe, "ann").checkout_url
    async with client(app) as c:
        r = await c.post(f"{url}/checkout", data={"item": "p5"}, headers={**ORIGIN, **JSON})
        assert r.status_code == 503 and r.json() == {"error": "Payments are not available right now."}
    n = billed(make_nasca, stripe_server.client())
    app = create_app(n, settings())
    url = app.state.links.url("bo", "free")
    async with client(app) as c:
        r = await c.post(f"{url}/checkout", data={"item": "nope"}, headers={**ORIGIN, **JSON})
        assert r.status_code == 404 and "no longer available" in r.json()["error"]
        evil = {"Origin": "https://evil.example", **JSON}
        r = await c.post(f"{url}/checkout", data={"item": "p5"}, headers=evil)
        assert r.status_code == 403
        r = await c.post(f"{url}/checkout", data={"item": "p5"}, headers={"Origin": "null", **JSON})
        assert r.status_code == 403
        r = await c.post(f"{url}/checkout", data={"item": "p5"},
                         headers={"Referer": "https://evil.example/x", **JSON})
        assert r.status_code == 403
        r = await c.post(f"{url}/checkout", data={"item": "nope"}, headers=ORIGIN)
        assert r.status_code == 404 and "no longer available" in r.text  # an HTML page for forms
    with StripeServer(webhook_secret=WHSEC, api_key="sk_other") as wrong_key:
        n2 = billed(make_nasca, wrong_key.client("sk_test_nasca"))
        app = create_app(n2, settings())
        async with client(app) as c:
            r = await c.post(f"{app.state.links.url('cy')}/checkout", data={"item": "p5"},
                             headers={**ORIGIN, **JSON})
            assert r.status_code == 502 and "could not be opened" in r.json()["error"]
    assert len(stripe_server.checkout_requests) == 0


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_dismiss_beacon_and_origins(memory_nasca):
    n = memory_nasca
    app = create_app(n, settings(allowed_origins=["https://host.example"]))
    err = block(n, "ann")
    url = err.checkout_url
    async with client(app) as c:
        beacon = b'{"kind":"dismissed"}'
        plain = {"Content-Type": "text/plain;charset=UTF-8"}
        assert (await c.post(f"{url}/event", content=beacon, headers={**plain, **ORIGIN})).status_code == 204
        host = {**plain, "Origin": "https://host.example"}
        assert (await c.post(f"{url}/event", content=beacon, headers=host)).status_code == 204
        evil = {**plain, "Origin": "https://evil.example"}
        assert (await c.post(f"{url}/event", content=beacon, headers=evil)).status_code == 403
        other = b'{"kind":"purchase_completed"}'
        assert (await c.post(f"{url}/event", content=other, headers=host)).status_code == 400
        assert (await c.post(f"{url}/event", content=b"{", headers=host)).status_code == 400
        # the page trusts a parent origin only from the allowed list
        allowed = await c.get(url, params={"parent": "https://host.example"})
        assert '"parentOrigin": "https://host.example"' in allowed.text and "embedded" in allowed.text
        assert "frame-ancestors 'self' https://host.example" in allowed.headers["content-security-policy"]
        foreign = await c.get(url, params={"parent": "https://evil.example"})
        assert '"parentOrigin": null' in foreign.text
    report = analytics_for(n).month()
    assert report.funnel.dismissed == 1 and report.events["dismissed"] == 2  # one prompt, two beacons
    assert report.funnel.prompt_shown == 1


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_prefetches_are_not_prompts_and_statics_are_served(memory_nasca):
    n = memory_nasca
    app = create_app(n, settings())
    url = block(n, "ann").checkout_url
    async with client(app) as c:
        assert (await c.get(url, headers={"Sec-Purpose": "prefetch"})).status_code == 200
        assert analytics_for(n).month().events["prompt_shown"] == 0
        js = await c.get("/nasca.js")
        assert js.status_code == 200 and js.headers["content-type"].startswith("application/javascript")
        assert "window.Nasca" in js.text and "ev.origin !== ORIGIN" in js.text
        for asset in ("upgrade.js", "nasca.css", "admin.css"):
            assert (await c.get(f"/static/{asset}")).status_code == 200
        assert (await c.get("/healthz")).text == "ok"


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_mounted_under_a_prefix_in_the_owners_app(memory_nasca, stripe_server):
    n = memory_nasca
    owner = Starlette(routes=[Mount("/nasca", app=create_app(n, settings(public_url=f"{PUBLIC}/nasca")))])
    err = block(n, "ann")
    assert err.checkout_url.startswith(f"{PUBLIC}/nasca/u/")
    async with client(owner) as c:
        page = await c.get(err.checkout_url)
        assert page.status_code == 200
        token = err.checkout_url.rsplit("/", 1)[1]
        assert f'action="/nasca/u/{token}/checkout"' in page.text
        assert "http://testserver/nasca/static/upgrade.js" in page.text
        r = await c.post(f"{err.checkout_url}/checkout", data={"item": "p5"}, headers={**ORIGIN, **JSON})
        assert r.status_code == 200
        success = stripe_server.checkout_requests[-1].params["success_url"]
        assert success.startswith(f"{PUBLIC}/nasca/u/{token}/")
        assert (await c.get("/nasca/nasca.js")).status_code == 200


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_unblocked_page_and_store_failure(memory_nasca, monkeypatch):
    n = memory_nasca
    app = create_app(n, settings())
    url = app.state.links.url("newcomer")
    async with client(app) as c:
        r = await c.get(url)
        assert r.status_code == 200 and "You're within your allowance" in r.text

        from nasca_core import StoreError

        async def down(*args, **kwargs):
            raise StoreError("down")

        monkeypatch.setattr(n, "aget_usage", down)
        r = await c.get(url)
        assert r.status_code == 503 and "Temporarily unavailable" in r.text and "newcomer" not in r.text


def test_settings_validate():
    from nasca_core import ConfigurationError

    for bad in ({"secret": "short"}, {"secret": SECRET, "public_url": "ftp://x"},
                {"secret": SECRET, "allowed_origins": ["https://a.example/path"]},
                {"secret": SECRET, "admin_token": "tiny"}, {"secret": SECRET, "link_ttl": 5}):
        with pytest.raises(ConfigurationError):
            ServerSettings(**bad)
    token = "aQ7-x9Lr2mZ4vKp8"
    s = ServerSettings(secret=SECRET, allowed_origins="HTTPS://App.Example:8443/", admin_token=token)
    assert s.allowed_origins == ("https://app.example:8443",)
    assert SECRET not in repr(s) and token not in repr(s)
    with pytest.raises(ConfigurationError):
        UpgradeLinks(s)  # links need a public URL
    assert re.fullmatch(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+", UpgradeLinks(settings()).token("u1"))


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
def test_connect_wires_an_app_process_without_the_web_app(make_nasca):
    from nasca_core import ConfigurationError
    from nasca_core.server import connect

    app_process = billed(make_nasca)
    links = connect(app_process, settings())
    err = block(app_process, "ann")
    assert links is not None and err.checkout_url == links(err)
    assert analytics_for(app_process).month().funnel.blocked == 1

    def own(e):
        return "https://example.com/upgrade"

    mine = make_nasca(checkout_url=own)
    connect(mine, settings())
    assert mine.checkout_url_factory is own  # an owner's factory is kept
    assert connect(make_nasca(), settings(public_url=None)) is None  # no public URL: no links
    with pytest.raises(ConfigurationError, match="differs"):
        connect(billed(make_nasca), settings(stripe_webhook_secret="whsec_another"))
    with pytest.raises(ConfigurationError):
        connect(make_nasca(), {"secret": SECRET})  # type: ignore[arg-type]


# -- what the page says, in each state ------------------------------------------------------------
def _why(page: str) -> str:
    """The page's state and its lead sentence, tags stripped."""
    m = re.search(r'id="nasca-why" data-state="(\w+)">(.*?)</p>', page, re.S)
    assert m is not None
    return m.group(1) + ": " + " ".join(re.sub(r"<[^>]+>", "", m.group(2)).split())


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_the_wording_follows_the_state(memory_nasca):
    n = memory_nasca
    app = create_app(n, settings())
    links = app.state.links
    r = n.reserve(Decimal("0.01"), user="wen")
    n.settle(r, Decimal("0.03"))
    # Bought credits, then spent past the daily allowance: the calls go on, paid by credits.
    n.billing.grant_credits("cara", "p5", idempotency_key="cs_cara")
    r = n.reserve(Decimal("0.01"), user="cara")
    n.settle(r, Decimal("0.12"))
    assert not n.get_usage("cara").blocked
    block(n, "bo")
    async with client(app) as c:
        within = (await c.get(links.url("wen", "free", "p1"))).text
        credits = (await c.get(links.url("cara", "free", "p2"))).text
        blocked = (await c.get(links.url("bo", "free", "p3"))).text
    assert _why(within) == ("within: You're within your allowance on the free plan. "
                            "Credits and plans give you more room.")
    assert "You're using your credits" in credits and "reached" not in credits
    assert _why(credits) == ("credits: Your daily allowance on the free plan is used up, so your credits are "
                             "paying for your AI usage until it resets. You have $2.98 of AI usage left on "
                             "credits.")
    # The full daily bar is the brand colour with a "credits are paying" tag, not an alarm.
    daily = credits[credits.index('data-window="daily"'):credits.index('data-window="monthly"')]
    assert "data-on-credits" in daily and "credits are paying" in daily and 'data-color="#635bff"' in daily
    assert "Credit balance: <b>$4.97</b>" in credits  # paid $5 for $3; $0.02 of it spent
    assert _why(blocked).startswith("blocked: Your daily AI allowance on the free plan is used up.")
    assert "Buy credits or upgrade to keep going now." in blocked
    daily = blocked[blocked.index('data-window="daily"'):blocked.index('data-window="monthly"')]
    assert 'data-color="#d64545"' in daily and "data-on-credits" not in daily


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_support_credits_show_and_amounts_read_like_money(make_nasca, stripe_server):
    n = billed(make_nasca, stripe_server.client(),
               tiers={"free": Tier(daily="0.0001", monthly="0.50"), "pro": Tier(monthly=10)})
    n.billing.grant_credits("sue", spend="2", paid="0", idempotency_key="support-981")
    n.billing.grant_credits("pat", "p5", idempotency_key="cs_pat")
    n.billing.grant_credits("pat", spend="1", paid="0", idempotency_key="support-982")
    r = n.reserve(Decimal("0.00001"), user="tiny")
    n.settle(r, Decimal("0.0000584"))
    app = create_app(n, settings())
    async with client(app) as c:
        sue = (await c.get(app.state.links.url("sue", "free", "p1"))).text
        tiny = (await c.get(app.state.links.url("tiny", "free", "p2"))).text
        pat = (await c.get(app.state.links.url("pat", "free", "p3"))).text
    # paid=0 credits are not worth $0 to the user: they show as free AI usage.
    assert 'Free credits: <b id="nasca-free-credits">$2.00</b> of AI usage' in sue
    assert "Credit balance" not in sue
    assert ('Credit balance: <b>$5.00</b> · plus <b id="nasca-free-credits">$1.00</b> of free AI usage'
            in " ".join(pat.split()))
    # Sub-cent figures never reach the user with their raw digits.
    assert "<b>&lt;$0.01</b> of &lt;$0.01" in tiny
    assert "0.0000584" not in tiny and "0.0001" not in tiny


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_an_optional_display_unit_shows_the_allowance_in_messages(memory_nasca):
    n = memory_nasca
    n.billing.grant_credits("mo", spend="1", paid="0", idempotency_key="gift-1")
    r = n.reserve(Decimal("0.01"), user="mo")
    n.settle(r, Decimal("0.0515"))
    app = create_app(n, settings(display_unit="messages", unit_cost="0.002"))
    async with client(app) as c:
        page = (await c.get(app.state.links.url("mo", "free", "p1"))).text
    assert "<b>25 messages</b> of 50 messages" in page  # $0.0515 of $0.10 at $0.002, rounded down
    assert "<b>500 messages</b> of 500 messages" not in page and "of 500 messages" in page  # the month
    assert '<b id="nasca-free-credits">500 messages</b>' in page
    assert "1,500 messages" in page and "Buy $5.00" in page  # a pack's spend in messages, its price in money
    assert "1,000 messages a day · 5,000 messages a month" in page  # the pro plan
    with pytest.raises(ConfigurationError, match="display_unit and unit_cost go together"):
        settings(display_unit="messages")
    with pytest.raises(ConfigurationError, match="unit_cost"):
        settings(display_unit="messages", unit_cost="0")


@pytest.mark.parametrize("backend", ["memory"], indirect=True)
async def test_nothing_on_offer_warns_at_startup_and_the_page_says_only_what_is_true(make_nasca, caplog):
    n = make_nasca(tiers={"free": Tier(daily="0.10", monthly="1")})
    with caplog.at_level(logging.WARNING, logger="nasca.server"):
        app = create_app(n, settings())
    assert "no credit packs or plans are on offer" in caplog.text
    err = block(n, "ann")
    async with client(app) as c:
        page = (await c.get(err.checkout_url)).text
    assert "You've reached your daily limit" in page and "It resets <b>in 12 h</b>" in page
    for absent in ("Buy credits", "upgrade", "No offers", "Secure payment by Stripe", "Not now"):
        assert absent not in page.split("<main", 1)[1].split("<script", 1)[0], absent
    assert "data-nasca-dismiss>Close</button>" in page
    caplog.clear()
    priced = billed(make_nasca)  # packs and plans, but no Stripe client to sell them
    with caplog.at_level(logging.WARNING, logger="nasca.server"):
        app = create_app(priced, settings())
    assert "there is no Stripe client" in caplog.text
    async with client(app) as c:
        page = (await c.get(block(priced, "bo").checkout_url)).text
    assert "Buy $5.00" not in page and "Secure payment by Stripe" not in page


def test_reader_money_rounds_the_way_people_read_money():
    from nasca_core._display import SpendDisplay, reader_money

    assert reader_money(Decimal("0.0001584")) == "<$0.01"
    assert reader_money(Decimal("0.015")) == "$0.02"  # half up, like a till
    assert reader_money(Decimal("0.0649")) == "$0.06" and reader_money(Decimal(0)) == "$0.00"
    assert reader_money(Decimal("1234.5")) == "$1,234.50" and reader_money(Decimal("4.5"), "eur") == "€4.50"
    assert reader_money(Decimal("0.001"), "chf") == "<0.01 CHF"
    assert SpendDisplay()(Decimal("0.0001")) == "<$0.01"
    assert SpendDisplay("messages", Decimal("0.002"))(Decimal("0.0059")) == "2 messages"
    assert SpendDisplay("messages", Decimal("0.002"))(Decimal("-1")) == "0 messages"
