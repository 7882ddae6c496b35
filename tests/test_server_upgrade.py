"""The end user's routes over HTTP (httpx on the ASGI app): the signed upgrade page, its
403s, checkout through the local Stripe server, status, the dismiss beacon, the return
pages, the overlay script, mounting under a prefix."""

from __future__ import annotations

import re
import time
from decimal import Decimal

import pytest
from starlette.applications import Starlette
from starlette.routing import Mount

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
