"""Deterministic token counting for the local provider server.

``"auto"`` uses tiktoken's ``o200k_base`` when it can be loaded without the network,
else ``"words"``: the number of matches of ``\\w+|[^\\w\\s]`` (each word and each
punctuation mark is one token). The server reports exactly what the counter returns,
so tests compare against ``ProviderServer.count_tokens`` or the recorded usage, never
against a hard-coded number that would change with the tokenizer.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import re
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasca_core._errors import ConfigurationError

_WORD = re.compile(r"\w+|[^\w\s]")
# Where tiktoken downloads each encoding from; its cache file is named sha1(url).
_BPE_URLS = {
    "o200k_base": "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
    "cl100k_base": "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
}
_ENV_LOCK = threading.Lock()

TokenizerSpec = str | Callable[[str], int]


@dataclass(frozen=True)
class Tokenizer:
    name: str
    count: Callable[[str], int]


def _count_words(text: str) -> int:
    return len(_WORD.findall(text))


def _tiktoken_cache_dir() -> str | None:
    # The folder tiktoken itself reads (load.read_file_cached); "" disables its cache.
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return os.environ[var] or None
    return os.path.join(tempfile.gettempdir(), "data-gym-cache")


def _llama_index_cache_dir() -> Path | None:
    # llama-index-core ships both encodings; find it without importing llama_index.core.
    try:
        spec = importlib.util.find_spec("llama_index.core")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        folder = Path(location) / "_static" / "tiktoken_cache"
        if folder.is_dir():
            return folder
    return None


@functools.cache
def _load_tiktoken(name: str) -> Any | None:
    """The tiktoken encoding if it loads without the network, else None."""
    url = _BPE_URLS.get(name)
    try:
        import tiktoken
    except ImportError:
        return None
    if url is None:
        return None
    key = hashlib.sha1(url.encode()).hexdigest()
    cache = _tiktoken_cache_dir()
    try:
        if cache is not None and os.path.exists(os.path.join(cache, key)):
            return tiktoken.get_encoding(name)
        shipped = _llama_index_cache_dir()
        # Borrow llama-index's copy the way llama-index does, only when the user has not
        # chosen a cache folder; never reach for the network from a test server.
        if shipped is None or not (shipped / key).exists() or "TIKTOKEN_CACHE_DIR" in os.environ:
            return None
        with _ENV_LOCK:
            os.environ["TIKTOKEN_CACHE_DIR"] = str(shipped)
            try:
                return tiktoken.get_encoding(name)
            finally:
                del os.environ["TIKTOKEN_CACHE_DIR"]
    except Exception:  # a corrupt cache or a tiktoken without this encoding
        return None


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
    if spec in _BPE_URLS:
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
        # disallowed_special=() so a prompt containing "<|endoftext|>" counts, not raises
        return len(encoding.encode(text, disallowed_special=()))

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
