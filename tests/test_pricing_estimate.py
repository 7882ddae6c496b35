"""Token estimates offline: our encoders equal tiktoken's, and without files we approximate."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import tiktoken

from nasca_core._errors import InvalidInputError, UnknownModelError
from nasca_core.pricing import (
    CHARS_PER_TOKEN,
    Pricer,
    PriceTable,
    StreamTextCounter,
    TokenUsage,
    _estimate,
    count_message_tokens,
    count_tokens,
    encoding_name_for,
    estimate_cost_nanos,
)

TEXTS = [
    "Hello, world!",
    "tiktoken is great!",
    "Übergrößenträger naïve café — 日本語のテキスト, emojis 🎉🚀 and\ttabs\n\nnewlines",
    "def f(x):\n    return x ** 2  # comment <|endoftext|>",
    "1234567890 3.14159 " * 20,
    "   leading and trailing spaces   ",
]


@pytest.fixture(autouse=True)
def _fresh_encoders() -> Iterator[None]:
    _estimate.clear_encoder_cache()
    yield
    _estimate.clear_encoder_cache()


def _reference(encoding: str, monkeypatch: pytest.MonkeyPatch) -> tiktoken.Encoding:
    # Point tiktoken itself at the folder our loader found, inside this test only.
    for folder in _estimate.search_dirs():
        if (folder / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").exists():
            monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(folder))
            return tiktoken.get_encoding(encoding)
    pytest.skip("no tiktoken BPE file on this machine")


def test_env_is_not_modified() -> None:
    import os

    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    count_tokens("hello", "gpt-4o")
    assert os.environ.get("TIKTOKEN_CACHE_DIR") == before


@pytest.mark.parametrize(
    ("model", "encoding"), [("gpt-4o", "o200k_base"), ("gpt-3.5-turbo", "cl100k_base")]
)
def test_counts_equal_tiktoken(model: str, encoding: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert _estimate.get_encoder(encoding) is not None
    reference = _reference(encoding, monkeypatch)
    for text in TEXTS:
        assert count_tokens(text, model) == len(reference.encode(text, disallowed_special=()))


def test_known_counts() -> None:
    if _estimate.get_encoder("cl100k_base") is None:
        pytest.skip("no tiktoken BPE file on this machine")
    assert count_tokens("tiktoken is great!", "gpt-4") == 6
    assert count_tokens("hello world", "gpt-4o") == 2
    assert count_tokens("", "gpt-4o") == 0


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-mini", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("gpt-5", "o200k_base"),
        ("openai/o3-mini", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("claude-sonnet-4-5", "cl100k_base"),
        ("gemini-2.5-pro", "cl100k_base"),
        (None, "cl100k_base"),
    ],
)
def test_encoding_choice(model: str | None, encoding: str) -> None:
    assert encoding_name_for(model) == encoding


def test_no_files_uses_approximation(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_estimate, "search_dirs", lambda: [tmp_path / "empty"])
    monkeypatch.delenv(_estimate.DOWNLOAD_ENV, raising=False)

    def no_network(name: str) -> None:
        raise AssertionError("must not try to download")

    monkeypatch.setattr(tiktoken, "get_encoding", no_network)
    text = "x" * 1001
    with caplog.at_level(logging.WARNING, logger="nasca.pricing"):
        assert count_tokens(text, "gpt-4o") == math.ceil(1001 / CHARS_PER_TOKEN) == 251
        assert count_tokens("abc", "gpt-4o") == 1
        assert count_tokens("abcde", "gpt-4o-mini") == 2
    warnings = [r for r in caplog.records if r.name == "nasca.pricing"]
    assert len(warnings) == 1  # once per encoding
    assert "ceil(characters / 4)" in warnings[0].getMessage()


def test_bad_hash_file_is_ignored(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "9b5ad71b2ce5302211f9c61530b329a4922fc6a4").write_bytes(b"garbage 1\n")
    monkeypatch.setattr(_estimate, "search_dirs", lambda: [tmp_path])
    monkeypatch.delenv(_estimate.DOWNLOAD_ENV, raising=False)
    assert _estimate.get_encoder("cl100k_base") is None
    assert count_tokens("abcdefgh") == 2


def test_tiktoken_cache_dir_is_searched_first(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    dirs = _estimate.search_dirs()
    assert dirs[0] == tmp_path
    assert any(d.parts[-2:] == ("_static", "tiktoken_cache") for d in dirs)


def test_download_only_when_allowed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(_estimate, "search_dirs", lambda: [tmp_path])
    calls: list[str] = []

    def fake_get_encoding(name: str) -> object:
        calls.append(name)
        raise ConnectionError("offline")

    monkeypatch.setattr(tiktoken, "get_encoding", fake_get_encoding)
    monkeypatch.setenv(_estimate.DOWNLOAD_ENV, "1")
    assert count_tokens("abcd", "gpt-4o") == 1  # download failed: approximation, no crash
    assert calls == ["o200k_base"]


def test_count_tokens_rejects_non_text() -> None:
    with pytest.raises(InvalidInputError):
        count_tokens(b"bytes")  # type: ignore[arg-type]


def test_message_tokens_match_openai_cookbook() -> None:
    if _estimate.get_encoder("o200k_base") is None:
        pytest.skip("no tiktoken BPE file on this machine")
    messages = [
        {"role": "system", "content": "You are a helpful assistant."},
        {"role": "user", "content": "Hello!", "name": "alice"},
    ]
    expected = (
        3
        + sum(
            3 + count_tokens(m["role"], "gpt-4o") + count_tokens(m["content"], "gpt-4o")
            for m in messages
        )
        + count_tokens("alice", "gpt-4o")
        + 1
    )
    assert count_message_tokens(messages, "gpt-4o") == expected


def test_message_content_parts() -> None:
    text_only = count_message_tokens([{"role": "user", "content": "describe this picture"}])
    parts = count_message_tokens(
        [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "describe this picture"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ]
    )
    assert parts == text_only + _estimate.IMAGE_TOKENS
    with_tools = count_message_tokens(
        [
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "1", "function": {"name": "f", "arguments": "{}"}}],
            },
        ]
    )
    assert with_tools > 6
    assert count_message_tokens([]) == 3
    with pytest.raises(InvalidInputError):
        count_message_tokens(["hello"])  # type: ignore[list-item]


def test_estimate_cost_nanos() -> None:
    pricer = Pricer()
    table = PriceTable.default()
    with_max = estimate_cost_nanos(pricer, "gpt-4o", 1000, max_tokens=2000)
    assert with_max == table.cost_nanos("gpt-4o", TokenUsage(input_tokens=1000, output_tokens=2000))
    default = estimate_cost_nanos(pricer, "gpt-4o", 1000)
    assert default == table.cost_nanos("gpt-4o", TokenUsage(input_tokens=1000, output_tokens=256))
    assert estimate_cost_nanos(pricer, "gpt-4o", 1000, default_output_tokens=0) == 2_500_000
    for bad in (-1, "10", 1.5, True):
        with pytest.raises(InvalidInputError):
            estimate_cost_nanos(pricer, "gpt-4o", bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidInputError):
        estimate_cost_nanos(pricer, "gpt-4o", 1, max_tokens=-5)
    with pytest.raises(UnknownModelError):
        estimate_cost_nanos(pricer, "mystery", 10)


def test_stream_text_counter() -> None:
    counter = StreamTextCounter("gpt-4o")
    assert counter.count() == 0
    chunks = ["Hel", "lo, wor", "", None, "ld! How are", " you?"]
    for chunk in chunks:
        counter.add(chunk)
    text = "Hello, world! How are you?"
    assert counter.text == text
    assert counter.count() == count_tokens(text, "gpt-4o")
    assert counter.usage(prompt_tokens=42) == TokenUsage(
        input_tokens=42, output_tokens=count_tokens(text, "gpt-4o")
    )
    counter.add(" More")
    assert counter.count() == count_tokens(text + " More", "gpt-4o")
