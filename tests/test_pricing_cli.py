"""`nasca prices`: source, version and date; each model's rates; what an override changes.
And the opt-in background update (against a local server speaking genai-prices' data format)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import genai_prices
import pytest

from nasca_core.cli import main
from nasca_core.pricing import PriceTable, TokenUsage, clear_source_cache, main_prices, start_price_updates


def test_shows_source_version_and_models(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prices", "gpt-5-2025-08-07", "claude-sonnet-4-6", "no-such-model"]) == 0
    out = capsys.readouterr().out
    assert f"Source: genai-prices {genai_prices.__version__} (bundled with the package)" in out
    assert "gpt-5-2025-08-07 -> gpt-5 (openai via genai-prices)" in out
    assert "input=$1.25" in out and "output=$10" in out and "web_search=$10" in out
    assert "cache_write_1h=$6" in out  # claude-sonnet-4-6's 1-hour cache writes
    assert "no-such-model: not priced" in out


def test_shows_what_an_override_changes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"gpt-5": {"input": 1, "output": 10}, "house": {"input": 2, "output": 4}}))
    assert main_prices(["gpt-5", "--prices", str(path)]) == 0
    out = capsys.readouterr().out
    assert "gpt-5 -> gpt-5 (owner price)" in out
    assert "override gpt-5: input $1.25 -> $1" in out
    assert "override house: not in genai-prices" in out


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "cannot read"),
        ("[1, 2]", "JSON object"),
        ('{"m": {"input": 0, "output": 0}}', "free=True"),
    ],
)
def test_bad_price_file_is_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str, message: str
) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    assert main_prices(["--prices", str(path)]) == 2
    assert message in capsys.readouterr().err


# --------------------------------------------------------------------------- background updates

DATA = [
    {
        "id": "openai", "name": "OpenAI", "api_pattern": "https://api\\.openai\\.com",
        "model_match": {"starts_with": "gpt-"},
        "models": [{"id": "gpt-5", "match": {"starts_with": "gpt-5"},
                    "prices": {"input_mtok": "7", "output_mtok": "70"}}],
    }
]


@pytest.fixture
def price_server() -> Iterator[str]:
    body = json.dumps(DATA).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/data.json"
    server.shutdown()
    server.server_close()


def test_opt_in_background_update_reprices_compiled_models(price_server: str) -> None:
    from genai_prices import data_snapshot

    table = PriceTable.default().with_overrides({})
    million = TokenUsage(input_tokens=1_000_000)
    assert table.cost_nanos("gpt-5", million) == 1_250_000_000  # bundled data, compiled
    updater = start_price_updates(3600, url=price_server)
    try:
        assert updater.wait(10)
        assert table.cost_nanos("gpt-5", million) == 7_000_000_000  # recompiled from the fetch
        from nasca_core.pricing._refresh import report

        assert "fetched by its background updater at" in report(PriceTable.default(), [], {})
    finally:
        updater.stop()
        data_snapshot.set_custom_snapshot(None)
        clear_source_cache()
    assert table.cost_nanos("gpt-5", million) == 1_250_000_000
