"""Deterministic token counting for the local provider server.

``"auto"`` uses tiktoken's ``o200k_base`` when it can be loaded without the network,
else ``"words"``: the number of matches of ``\\w+|[^\\w\\s]`` (each word and each
punctuation mark is one token). The server reports exactly what the counter returns,
so tests compare against ``ProviderServer.count_tokens`` or the recorded usage, never
against a hard-coded number that would change with the tokenizer.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nasca_core._errors import ConfigurationError

_WORD = re.compile(r"\w+|[^\w\s]")
_ENCODINGS = ("o200k_base", "cl100k_base")

TokenizerSpec = str | Callable[[str], int]


@dataclass(frozen=True)
class Tokenizer:
    name: str
    count: Callable[[str], int]


def _count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _load_tiktoken(name: str) -> Any | None:
    """The tiktoken encoding if it loads without the network, else None (the same offline
    loader the estimates use: it never touches TIKTOKEN_CACHE_DIR)."""
    from nasca_core.pricing._estimate import get_encoder

    return get_encoder(name)


def resolve_tokenizer(spec: TokenizerSpec) -> Tokenizer:
    """Build the counter named by ``spec``. Raises ConfigurationError for an unusable one."""
    if callable(spec):
        return Tokenizer(getattr(spec, "__name__", "custom"), spec)
    if spec == "words":
        return Tokenizer("words", _count_words)
    if spec == "auto":
        encoding = _load_tiktoken("o200k_base")
        if encoding is None:
            return Tokenizer("words", _count_words)
        return _tiktoken_tokenizer("o200k_base", encoding)
    if spec in _ENCODINGS:
        encoding = _load_tiktoken(spec)
        if encoding is None:
            raise ConfigurationError(f"tokenizer {spec!r} cannot be loaded offline; use 'auto' or 'words'")
        return _tiktoken_tokenizer(spec, encoding)
    raise ConfigurationError(
        f"unknown tokenizer {spec!r}; use 'auto', 'words', 'o200k_base', 'cl100k_base' "
        "or a callable(str) -> int"
    )


def _tiktoken_tokenizer(name: str, encoding: Any) -> Tokenizer:
    def count(text: str) -> int:
        # ordinary: a prompt containing "<|endoftext|>" is text to count, not a special token
        return len(encoding.encode_ordinary(text))

    return Tokenizer(name, count)


def truncate(text: str, budget: int, count: Callable[[str], int]) -> str:
    """The longest prefix of ``text`` ending at a word boundary that counts <= budget."""
    if budget <= 0:
        return ""
    ends = [m.end() for m in re.finditer(r"\s*\S+", text)]
    lo, hi = 0, len(ends)  # invariant: prefix of lo words fits
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count(text[: ends[mid - 1]]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return text[: ends[lo - 1]] if lo else ""
