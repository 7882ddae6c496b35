"""The notebooks: each runs top to bottom in a clean kernel, and its charts show the ledger's numbers.

Every notebook under ``notebooks/`` is executed with nbclient in a fresh kernel of this
interpreter (the project venv's python, never whatever ``python`` is on PATH), with
``MPLBACKEND=Agg``, no API keys, no ``REDIS_URL``, and a guard in the kernel that refuses
any connection or DNS lookup beyond loopback: the only server a notebook may use is
``nasca_core.testing.ProviderServer`` on 127.0.0.1. A failing cell fails the test with
its traceback.

Charts are checked for content. ``nasca_core.notebook`` charts put the values read back
from the figure's artists into their output (``application/vnd.nasca.chart+json``). After
the notebook's own cells, the test runs a probe cell in the same kernel that reads the
truth from the objects the notebook built (the provider server's recorded requests, the
ledger, credit lots, the analytics report) and compares the drawn values against it.

The repository copies must carry no outputs.
"""

from __future__ import annotations

import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
pytest.importorskip("matplotlib")

from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402

from nasca_core.notebook import CHART_MIME  # noqa: E402

pytestmark = pytest.mark.notebook

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
KERNEL = "nasca-notebook-tests"
PROBE = "NASCA_PROBE "
SECRETS = ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "STRIPE_API_KEY", "STRIPE_SECRET_KEY",
           "REDIS_URL", "NASCA_REDIS_URL")
CELL_TIMEOUT = 120
ANALYTICS_BUDGET_S = 30.0

# Run in the kernel before any cell: the notebooks may reach loopback only.
OFFLINE_GUARD = '''
def _nasca_offline():
    import ipaddress
    import socket

    def local(host):
        if host is None:
            return True
        host = host.decode() if isinstance(host, bytes) else str(host)
        if host in ("localhost", ""):
            return True
        try:
            return ipaddress.ip_address(host.split("%")[0]).is_loopback
        except ValueError:
            return False

    def refuse(host):
        raise OSError(f"notebook tests allow loopback only; refused {host!r}")

    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):
        if not local(host):
            refuse(host)
        return real_getaddrinfo(host, *args, **kwargs)

    def guarded(real):
        def connect(self, address):
            if self.family in (socket.AF_INET, socket.AF_INET6) and not local(address[0]):
                refuse(address[0])
            return real(self, address)
        return connect

    socket.getaddrinfo = getaddrinfo
    socket.socket.connect = guarded(socket.socket.connect)
    socket.socket.connect_ex = guarded(socket.socket.connect_ex)


_nasca_offline()
del _nasca_offline
'''


# -- running notebooks --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def kernels(tmp_path_factory: pytest.TempPathFactory) -> KernelSpecManager:
    """A kernelspec for this interpreter: nbclient's default "python3" would start whatever
    ``python`` is first on PATH."""
    base = tmp_path_factory.mktemp("kernels")
    guard = base / "offline_guard.py"
    guard.write_text(OFFLINE_GUARD)
    spec_dir = base / KERNEL
    spec_dir.mkdir()
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}",
                 f"--IPKernelApp.exec_files={guard}"],
        "display_name": "nasca notebook tests",
        "language": "python",
        # The working tree first, whatever version of nasca is installed.
        "env": {"MPLBACKEND": "Agg", "PYTHONPATH": pythonpath, "PYDEVD_DISABLE_FILE_VALIDATION": "1"},
    }))
    return KernelSpecManager(kernel_dirs=[str(base)])


def execute(kernels: KernelSpecManager, name: str, probe: str | None = None,
            env: dict[str, str] | None = None) -> tuple[Any, float]:
    """Run notebook ``name`` in a fresh kernel, then ``probe`` (inserted before the last cell,
    which stops the servers). Returns the executed notebook and its run time."""
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    if probe is not None:
        assert "stop()" in nb.cells[-1].source, f"{name}: the last cell should stop the servers"
        nb.cells.insert(len(nb.cells) - 1, nbformat.v4.new_code_cell(probe))
    with pytest.MonkeyPatch.context() as mp:
        for key in SECRETS:
            mp.delenv(key, raising=False)
        for key, value in (env or {}).items():
            mp.setenv(key, value)
        # IPC sockets (no TCP port, no unencrypted-TCP warning) at an absolute path of their
        # own: a relative one resolves against the kernel's cwd, the notebooks folder.
        sockets = Path(tempfile.mkdtemp(prefix="nasca-kernel-")) / "kernel"
        km = KernelManager(kernel_name=KERNEL, kernel_spec_manager=kernels, transport="ipc",
                           ip=str(sockets))
        client = nbclient.NotebookClient(
            nb, km=km, timeout=CELL_TIMEOUT, allow_errors=False, record_timing=False,
            resources={"metadata": {"path": str(NOTEBOOK_DIR)}},
        )
        started = time.perf_counter()
        try:
            client.execute(cleanup_kc=True)  # nbclient keeps a kernel it did not start alive
        finally:
            if km.has_kernel and km.is_alive():
                km.shutdown_kernel(now=True)
            shutil.rmtree(sockets.parent, ignore_errors=True)
    return nb, time.perf_counter() - started


class Run:
    """An executed notebook's outputs."""

    def __init__(self, nb: Any, seconds: float) -> None:
        self.nb = nb
        self.seconds = seconds
        self.outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]

    def probe(self) -> dict[str, Any]:
        for o in self.outputs:
            if o.output_type == "stream" and o.text.startswith(PROBE):
                data: dict[str, Any] = json.loads(o.text[len(PROBE):])
                return data
        raise AssertionError("the probe cell printed nothing")

    def charts(self) -> dict[str, dict[str, Any]]:
        found = {}
        for o in self.outputs:
            if o.output_type in ("display_data", "execute_result") and CHART_MIME in o.data:
                chart = o.data[CHART_MIME]
                assert o.data.get("image/png"), f"chart {chart['title']!r} has no image"
                found[chart["title"]] = chart
        return found

    def chart(self, starts: str) -> dict[str, Any]:
        matches = [c for title, c in self.charts().items() if title.startswith(starts)]
        assert len(matches) == 1, f"one chart titled {starts!r}…, found {list(self.charts())}"
        return matches[0]

    def html(self, css_class: str) -> list[str]:
        return [o.data["text/html"] for o in self.outputs
                if o.output_type in ("display_data", "execute_result") and "text/html" in o.data
                and f"class='{css_class}'" in o.data["text/html"]]

    def text(self) -> str:
        return "".join(o.text for o in self.outputs if o.output_type == "stream")


def probe_cell(body: str) -> str:
    return f"import json as _json\n{body}\nprint({PROBE!r} + _json.dumps(_probe, default=str))\n"


def close(a: float, b: float, tol: float = 1e-9) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def bars(chart: dict[str, Any]) -> list[float]:
    (axes,) = chart["drawn"]["axes"]
    (container,) = axes["bars"]
    return [float(v) for v in container["values"]]


def lines(chart: dict[str, Any]) -> dict[str, dict[str, list[Any]]]:
    (axes,) = chart["drawn"]["axes"]
    return {line["label"]: line for line in axes["lines"]}


_cache: dict[str, Run] = {}


def run(kernels: KernelSpecManager, name: str, probe: str) -> Run:
    if name not in _cache:
        _cache[name] = Run(*execute(kernels, name, probe_cell(probe)))
    return _cache[name]


@pytest.fixture(scope="module", autouse=True)
def _clear_cache() -> Iterator[None]:
    yield
    _cache.clear()


# -- the repository copies ----------------------------------------------------------------------
def test_every_notebook_is_checked_here() -> None:
    assert sorted(CHECKS) == NOTEBOOKS, "add a test (and a probe) for each new notebook"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_outputs_are_stripped_in_the_repository(name: str) -> None:
    nb = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{name} cell {i} has outputs: strip them"
            assert cell.execution_count is None, f"{name} cell {i} has an execution count"
    assert "widgets" not in nb.metadata, f"{name} carries widget state: strip it"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"


# -- 01: quickstart -----------------------------------------------------------------------------
QUICKSTART_PROBE = """
from nasca_core.pricing import TokenUsage as _TU
_probe = {
    "request_costs": [nasca.cost_of(r.model, _TU(input_tokens=r.usage.input_tokens,
                                                  output_tokens=r.usage.output_tokens)) / 1e9
                      for r in provider.requests if r.endpoint == "chat.completions"],
    "daily_limit": float(nasca.get_usage("alice").daily_limit),
    "free_daily_limit": 0.002,
    "requests_when_blocked": requests_so_far,
    "answered_before_block": len(daily_spend),
}
"""


def check_quickstart(kernels: KernelSpecManager) -> None:
    r = run(kernels, "01_quickstart.ipynb", QUICKSTART_PROBE)
    p = r.probe()
    chart = r.chart("Alice's spend today")
    drawn = bars(chart)
    # Each bar is alice's spend after one answer: the running total of what the provider
    # reported for her requests, priced; the dashed line is the free tier's daily limit.
    expected = [sum(p["request_costs"][:i + 1]) for i in range(len(drawn))]
    assert len(drawn) == p["answered_before_block"] == p["requests_when_blocked"] >= 2
    assert all(close(a, b) for a, b in zip(drawn, expected, strict=True)), (drawn, expected)
    limit = lines(chart)["daily limit"]["y"]
    assert limit == [p["free_daily_limit"]] * 2
    assert drawn[-2] < p["free_daily_limit"] <= drawn[-1]  # blocked right after crossing it
    assert [t for t in chart["drawn"]["axes"][0]["xticklabels"]] == [f"call {i}" for i in
                                                                     range(1, len(drawn) + 1)]
    # The upgrade card, with its link, and per-window progress bars.
    (card,) = r.html("nasca-blocked")
    assert "data-window='daily'" in card
    assert "href='https://example.com/upgrade?user=alice&amp;prompt=" in card
    usage = r.html("nasca-usage")
    assert any("data-window='daily'" in h and "data-percent='21.0'" in h for h in usage)
    assert "REDIS_URL is not set: skipped" in r.text()


def test_quickstart(kernels: KernelSpecManager) -> None:
    check_quickstart(kernels)


@pytest.mark.redis
def test_quickstart_redis_cell(kernels: KernelSpecManager, redis_url: str) -> None:
    nb, _ = execute(kernels, "01_quickstart.ipynb", env={"REDIS_URL": redis_url})
    r = Run(nb, 0)
    assert "skipped" not in r.text()
    redis_cells = [c for c in nb.cells if c.cell_type == "code" and "REDIS_URL" in c.source]
    (cell,) = redis_cells
    html = [o.data["text/html"] for o in cell.outputs if "text/html" in o.get("data", {})]
    assert len(html) == 1 and "data-user='alice'" in html[0] and "data-calls='1'" in html[0]


# -- 02: LlamaIndex -----------------------------------------------------------------------------
LLAMAINDEX_PROBE = """
from nasca_core.pricing import TokenUsage as _TU
_probe = {
    "ledger": {u: float(nasca.get_usage(u, tier=t).month_cost) for u, t in users.items()},
    "provider_total": sum(nasca.cost_of(r.model, _TU(input_tokens=r.usage.input_tokens,
                                                      output_tokens=r.usage.output_tokens))
                          for r in provider.requests if r.endpoint == "chat.completions") / 1e9,
    "unpriced_requests": sum(1 for r in provider.requests
                             if r.endpoint == "chat.completions" and r.usage is None),
    "blocked_requests": sum(row["provider_requests"] for row in log if row["status"] == "blocked"),
    "blocked_users": sorted({row["user"] for row in log if row["status"] == "blocked"}),
    "free_daily_limit": float(nasca.get_usage("bob", tier="free").daily_limit),
}
"""


def check_llamaindex(kernels: KernelSpecManager) -> None:
    r = run(kernels, "02_llamaindex.ipynb", LLAMAINDEX_PROBE)
    p = r.probe()
    chart = r.chart("AI cost per user")
    labels = chart["drawn"]["axes"][0]["xticklabels"]
    drawn = dict(zip(labels, bars(chart), strict=True))
    # Each bar is the ledger's charge for that user, and together they are exactly what the
    # provider reported for every request it served: nothing uncharged, nothing invented.
    assert set(drawn) == set(p["ledger"]) == {"bob", "carol", "dana", "erin"}
    assert all(close(drawn[u], p["ledger"][u]) for u in drawn), (drawn, p["ledger"])
    assert p["unpriced_requests"] == 0
    assert close(sum(drawn.values()), p["provider_total"])
    assert lines(chart)["free tier's daily limit"]["y"] == [p["free_daily_limit"]] * 2
    # Blocked questions never reached the provider; the free users were blocked, carol was not.
    assert p["blocked_requests"] == 0
    assert "bob" in p["blocked_users"] and "carol" not in p["blocked_users"]
    assert drawn["bob"] >= p["free_daily_limit"] and drawn["carol"] > drawn["erin"] > 0
    assert r.html("nasca-blocked")


def test_llamaindex(kernels: KernelSpecManager) -> None:
    check_llamaindex(kernels)


# -- 03: credits --------------------------------------------------------------------------------
CREDITS_PROBE = """
_u = nasca.get_usage("maya")
_probe = {
    "steps": [t["step"] for t in timeline],
    "lots": [{"pack": l.pack, "paid": float(l.paid), "granted": float(l.granted),
              "remaining": float(l.remaining), "revoked": l.revoked} for l in nasca.credit_lots("maya")],
    "display": float(_u.credit_balance_display),
    "spend": float(_u.credit_balance),
    "blocked": _u.blocked,
}
"""


def check_credits(kernels: KernelSpecManager) -> None:
    r = run(kernels, "03_credits_and_upgrades.ipynb", CREDITS_PROBE)
    p = r.probe()
    chart = r.chart("Maya's credit balance")
    series = lines(chart)
    shown = [float(v) for v in series["credits shown to maya (what she paid)"]["y"]]
    spend = [float(v) for v in series["AI spend they cover"]["y"]]
    steps = p["steps"]
    assert len(shown) == len(spend) == len(steps)
    starter, plus = p["lots"]
    assert (starter["pack"], plus["pack"]) == ("starter", "plus") and plus["revoked"]
    i_starter = steps.index("bought starter ($5)")
    i_plus = steps.index("bought plus ($20)")
    i_refund = steps.index("plus refunded")
    assert 0 < i_starter < i_plus < i_refund == len(steps) - 1
    # Top-ups add exactly what was paid to the balance shown, and what was granted to the
    # AI spend; nothing else ever raises either.
    jumps = [(i, shown[i] - shown[i - 1], spend[i] - spend[i - 1]) for i in range(1, len(steps))
             if spend[i] > spend[i - 1]]
    assert [(i, round(a, 9), round(b, 9)) for i, a, b in jumps] == [
        (i_starter, starter["paid"], starter["granted"]), (i_plus, plus["paid"], plus["granted"])]
    # At every step the balance shown is the display maths applied to the spend left,
    # lots drawn oldest first: remaining x paid / granted, summed.
    r_s, r_p = starter["paid"] / starter["granted"], plus["paid"] / plus["granted"]
    for i in range(len(steps)):
        if i < i_starter:
            expected = 0.0
        elif i < i_plus:
            expected = spend[i] * r_s
        elif i < i_refund:
            from_plus = min(spend[i], plus["granted"])
            expected = (spend[i] - from_plus) * r_s + from_plus * r_p
        else:
            expected = 0.0
        assert close(shown[i], expected, 1e-6), (i, steps[i], shown[i], expected)
    assert spend[i_plus - 1] < spend[i_starter]  # she drew on the starter pack
    assert spend[i_refund - 1] < plus["granted"]  # and on the plus pack, before the refund
    # The last point is the ledger now: the refund revoked what remained of the plus lot.
    assert close(shown[-1], p["display"]) and close(spend[-1], p["spend"]) and p["blocked"]
    assert any("data-display='5" in h for h in r.html("nasca-usage"))
    cards = r.html("nasca-blocked")
    assert any("nasca-hard-cap" in h for h in cards)
    # The card links to the upgrade page: a signed link made by nasca_core.server.connect.
    assert all("class='nasca-upgrade-link' href='http://localhost:8000/nasca/u/" in h for h in cards)
    assert "replayed: granted duplicate = True" in r.text() and "tampered: SignatureError" in r.text()


def test_credits_and_upgrades(kernels: KernelSpecManager) -> None:
    check_credits(kernels)


# -- 04: analytics ------------------------------------------------------------------------------
ANALYTICS_PROBE = """
_report = analytics.month("2026-09")
_paid = {u: sum(float(l.paid) for l in nasca.credit_lots(u)) for u in users}
_cost = {u: float(nasca.get_usage(u).month_cost) for u in users}
_probe = {
    "funnel": [_report.funnel.blocked, _report.funnel.prompt_shown, _report.funnel.checkout_started,
               _report.funnel.purchase_completed],
    "revenue": float(_report.revenue_usd), "ai_cost": float(_report.ai_cost),
    "ledger_revenue": sum(_paid.values()), "ledger_cost": sum(_cost.values()),
    "profit": {u: _paid[u] - _cost[u] for u in users},
    "users": len(users), "month_start": MONTH_START.isoformat(), "days": DAYS,
}
"""


def check_analytics(kernels: KernelSpecManager) -> None:
    r = run(kernels, "04_analytics.ipynb", ANALYTICS_PROBE)
    assert r.seconds < ANALYTICS_BUDGET_S, f"the simulated month took {r.seconds:.1f} s"
    p = r.probe()
    # The analytics agree with the ledger: revenue is what the credit lots say was paid,
    # AI cost what the users' usage says was charged.
    assert close(p["revenue"], p["ledger_revenue"], 1e-6) and p["revenue"] > 0
    assert close(p["ai_cost"], p["ledger_cost"], 1e-6) and p["ai_cost"] > 0

    funnel = r.chart("Upgrade funnel")
    assert funnel["drawn"]["axes"][0]["yticklabels"] == [
        "blocked", "upgrade prompt shown", "checkout started", "purchase completed"]
    drawn = [int(v) for v in bars(funnel)]
    assert drawn == p["funnel"]
    assert drawn == sorted(drawn, reverse=True) and drawn[-1] > 0

    money = lines(r.chart("Cumulative revenue and AI cost"))
    revenue, cost = money["revenue (credit packs)"], money["AI cost (provider bill)"]
    assert revenue["x"] == cost["x"] == list(range(1, p["days"] + 1))
    for series in (revenue["y"], cost["y"]):
        assert all(a <= b for a, b in itertools.pairwise(series)), "cumulative"
    assert close(revenue["y"][-1], p["revenue"], 1e-6) and close(cost["y"][-1], p["ai_cost"], 1e-6)

    profit = r.chart("Profit per user")
    drawn_profit = bars(profit)
    expected = sorted(p["profit"].values(), reverse=True)
    assert len(drawn_profit) == p["users"] == 300
    assert all(close(a, b, 1e-6) for a, b in zip(drawn_profit, expected, strict=True))
    assert drawn_profit[0] > 0 > drawn_profit[-1]
    assert close(sum(drawn_profit), p["revenue"] - p["ai_cost"], 1e-6)

    # The simulated month shows a progress bar.
    assert any("September 2026" in str(o.get("data", {}).get("text/plain", "")) for o in r.outputs)


def test_analytics(kernels: KernelSpecManager) -> None:
    check_analytics(kernels)


CHECKS = {
    "01_quickstart.ipynb": check_quickstart,
    "02_llamaindex.ipynb": check_llamaindex,
    "03_credits_and_upgrades.ipynb": check_credits,
    "04_analytics.ipynb": check_analytics,
}


def test_the_kernel_reaches_loopback_only(kernels: KernelSpecManager, tmp_path: Path) -> None:
    # The guard the notebooks run under: a notebook that touched the network would fail.
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src) for src in (
        "import socket, sys, os\n"
        "print(sys.executable, os.environ.get('MPLBACKEND'), 'REDIS_URL' in os.environ)",
        "import http.server, threading, urllib.request\n"
        "srv = http.server.ThreadingHTTPServer(('127.0.0.1', 0), http.server.SimpleHTTPRequestHandler)\n"
        "threading.Thread(target=srv.serve_forever, daemon=True).start()\n"
        "print(urllib.request.urlopen(f'http://127.0.0.1:{srv.server_port}/').status)\n"
        "srv.shutdown()",
        "for target in [('93.184.215.14', 80), ('example.com', 443)]:\n"
        "    try:\n"
        "        socket.create_connection(target, timeout=2)\n"
        "        print('connected', target)\n"
        "    except OSError as exc:\n"
        "        print('refused', 'loopback only' in str(exc))",
    )]
    path = tmp_path / "guard.ipynb"
    nbformat.write(nb, path)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("REDIS_URL", "redis://example.com:6379/0")
        mp.setattr(sys.modules[__name__], "NOTEBOOK_DIR", tmp_path)
        executed, _ = execute(kernels, path.name)
    out = [o.text for c in executed.cells for o in c.outputs
           if o.output_type == "stream" and o.name == "stdout"]
    assert out == [f"{sys.executable} Agg False\n", "200\n", "refused True\nrefused True\n"]


# -- the renderers, on their own ----------------------------------------------------------------
def test_display_escapes_and_links_only_http() -> None:
    from nasca_core import NascaBlockedError
    from nasca_core._display import blocked_html, table_html

    err = NascaBlockedError(user_id="<u>", tier="free", window="daily", usage=None, resets_at=None,
                            upgrade_message="<script>x</script>", checkout_url="javascript:alert(1)")
    html = blocked_html(err)
    assert "<script>" not in html and "&lt;u&gt;" in html and "href=" not in html
    err.checkout_url = "https://pay.example/x?a=1&b='2'"
    assert "href='https://pay.example/x?a=1&amp;b=&#x27;2&#x27;'" in blocked_html(err)
    table = table_html([{"user": "<b>", "cost": Decimal("1.5"), "calls": 1200}])
    assert "&lt;b&gt;" in table and "$1.50" in table and "1,200" in table
