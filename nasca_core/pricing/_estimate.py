"""Token counts before a call (and for streams that report no usage), offline.

tiktoken's ``get_encoding`` downloads its BPE files on first use and raises
``ConnectionError`` without internet. Setting ``TIKTOKEN_CACHE_DIR`` globally is no fix:
llama-index-core only points tiktoken at its bundled files when that variable is unset,
so setting it elsewhere breaks llama-index offline. So we build the two encodings we need
ourselves from a local BPE file, looked up in this order:

1. ``$TIKTOKEN_CACHE_DIR`` (or ``$DATA_GYM_CACHE_DIR``), as tiktoken would;
2. tiktoken's default cache, ``<tempdir>/data-gym-cache``;
3. the copies llama-index-core ships in ``llama_index/core/_static/tiktoken_cache/``
   (found with ``importlib.util.find_spec``, without importing llama_index);
4. ``tiktoken.get_encoding`` (may download) only when ``NASCA_TOKENIZER_DOWNLOAD=1``.

Failing all of these we count ``ceil(len(text) / 4)`` tokens (OpenAI's rule of thumb of
about 4 characters per English token) and log one warning: an estimate, never a crash and
never a network wait.

Encodings: ``o200k_base`` for the gpt-4o / gpt-4.1 / gpt-5 / o-series families,
``cl100k_base`` for everything else. Anthropic and Gemini publish no tokenizer, so for them
cl100k_base is an approximation (usually within ~10-20% for English text).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib.util
import json
import logging
import math
import os
import tempfile
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from nasca_core._errors import InvalidInputError
from nasca_core.pricing._pricer import Pricer
from nasca_core.pricing._usage import MAX_TOKENS, TokenUsage

logger = logging.getLogger("nasca.pricing")

CHARS_PER_TOKEN = 4  # the documented fallback: ceil(len(text) / 4)
TOKENS_PER_MESSAGE = 3  # <|start|>{role}\n ... <|end|>\n  (OpenAI cookbook, gpt-4o and later)
TOKENS_PER_NAME = 1
REPLY_PRIMING_TOKENS = 3  # every reply is primed with <|start|>assistant<|message|>
IMAGE_TOKENS = 765  # one 1024x1024 high-detail image on gpt-4o; a conservative flat estimate
DOWNLOAD_ENV = "NASCA_TOKENIZER_DOWNLOAD"


class _Encoder(Protocol):
    def encode_ordinary(self, text: str) -> list[int]: ...


# name -> (download URL whose sha1 names the cache file, sha256 of the content, pattern, specials)
_CL100K_PAT = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+"""
    r"""|\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PAT = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
_ENCODINGS: dict[str, tuple[str, str, str, dict[str, int]]] = {
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PAT,
        {
            "<|endoftext|>": 100257,
            "<|fim_prefix|>": 100258,
            "<|fim_middle|>": 100259,
            "<|fim_suffix|>": 100260,
            "<|endofprompt|>": 100276,
        },
    ),
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PAT,
        {"<|endoftext|>": 199999, "<|endofprompt|>": 200018},
    ),
}

_O200K_PREFIXES = (
    "gpt-4o",
    "chatgpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "gpt-oss",
    "gpt-6",
    "gpt-realtime",
    "gpt-audio",
    "codex-mini",
)

_lock = threading.Lock()
_encoders: dict[str, _Encoder | None] = {}  # None: no file found, approximate
_warned: set[str] = set()


@functools.lru_cache(maxsize=1024)
def encoding_name_for(model: str | None) -> str:
    """``o200k_base`` for gpt-4o/4.1/5 and o-series models, else ``cl100k_base``."""
    if model:
        name = model.strip().lower().rsplit("/", 1)[-1]
        if name.startswith(_O200K_PREFIXES):
            return "o200k_base"
    return "cl100k_base"


def search_dirs() -> list[Path]:
    """Folders searched for tiktoken BPE files, in order (see the module docstring)."""
    dirs: list[Path] = []
    for var in ("TIKTOKEN_CACHE_DIR", "DATA_GYM_CACHE_DIR"):
        value = os.environ.get(var)
        if value:
            dirs.append(Path(value))
            break
    dirs.append(Path(tempfile.gettempdir()) / "data-gym-cache")
    spec = importlib.util.find_spec("llama_index.core") if _has_llama_index() else None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            dirs.append(Path(location) / "_static" / "tiktoken_cache")
    return dirs


def _has_llama_index() -> bool:
    # find_spec("llama_index.core") imports the parent package; check it exists first.
    try:
        return importlib.util.find_spec("llama_index") is not None
    except (ImportError, ValueError):
        return False


def _load_ranks(name: str) -> dict[bytes, int] | None:
    url, sha256, _, _ = _ENCODINGS[name]
    filename = hashlib.sha1(url.encode()).hexdigest()  # tiktoken's cache key
    for folder in search_dirs():
        path = folder / filename
        try:
            data = path.read_bytes()
        except OSError:
            continue
        if hashlib.sha256(data).hexdigest() != sha256:
            logger.debug("ignoring %s: content hash mismatch", path)
            continue
        # Parsed here rather than with tiktoken.load.load_tiktoken_bpe(path): that function
        # also copies the file into the cache folder, and raises when TIKTOKEN_CACHE_DIR is
        # read-only. The format is one "base64(token) rank" pair per line.
        ranks: dict[bytes, int] = {}
        for line in data.splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        return ranks
    return None


def _build(name: str) -> _Encoder | None:
    import tiktoken

    _, _, pat_str, specials = _ENCODINGS[name]
    ranks = _load_ranks(name)
    if ranks is not None:
        return tiktoken.Encoding(name=name, pat_str=pat_str, mergeable_ranks=ranks, special_tokens=specials)
    if os.environ.get(DOWNLOAD_ENV, "").strip().lower() in ("1", "true", "yes"):
        try:
            return tiktoken.get_encoding(name)
        except Exception as exc:  # network errors come in many types; we only log and approximate
            logger.warning("could not download tiktoken encoding %s: %s", name, exc)
    return None


def get_encoder(encoding_name: str) -> _Encoder | None:
    """The cached tiktoken encoder, or None when no BPE file is available (approximating)."""
    try:
        return _encoders[encoding_name]
    except KeyError:
        pass
    with _lock:
        if encoding_name not in _encoders:
            _encoders[encoding_name] = _build(encoding_name)
        return _encoders[encoding_name]


def clear_encoder_cache() -> None:
    """Forget loaded encoders (tests; after installing BPE files)."""
    with _lock:
        _encoders.clear()
        _warned.clear()
        _counts.clear()


def _approximate(text: str, encoding_name: str) -> int:
    if encoding_name not in _warned:
        with _lock:
            first = encoding_name not in _warned
            _warned.add(encoding_name)
        if first:
            logger.warning(
                "No tiktoken file for %s found offline (searched %s); estimating tokens as "
                "ceil(characters / %d). Set TIKTOKEN_CACHE_DIR to a folder with the file, "
                "or %s=1 to allow a download.",
                encoding_name,
                ", ".join(str(d) for d in search_dirs()),
                CHARS_PER_TOKEN,
                DOWNLOAD_ENV,
            )
    return math.ceil(len(text) / CHARS_PER_TOKEN)


_CACHE_TEXT_CHARS = 4096
_CACHE_ENTRIES = 8192
_counts: dict[tuple[str, str], int] = {}


def count_tokens(text: str, model: str | None = None) -> int:
    """Tokens in ``text`` for ``model`` (special-token strings count as plain text).

    Raises InvalidInputError if ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise InvalidInputError(f"text must be a str, got {type(text)!r}")
    if not text:
        return 0
    name = encoding_name_for(model)
    # A chat resends its whole history every turn: remember the counts of short texts.
    cacheable = len(text) <= _CACHE_TEXT_CHARS
    if cacheable and (known := _counts.get((name, text))) is not None:
        return known
    encoder = get_encoder(name)
    if encoder is None:
        return _approximate(text, name)
    count = len(encoder.encode_ordinary(text))
    if cacheable:
        if len(_counts) >= _CACHE_ENTRIES:
            _counts.clear()
        _counts[(name, text)] = count
    return count


def count_message_tokens(messages: Iterable[Mapping[str, Any]], model: str | None = None) -> int:
    """Prompt tokens of OpenAI-style chat messages, with the usual per-message overhead.

    ``content`` may be a str, None, or a list of parts: ``{"type": "text", "text": ...}`` parts
    are counted, image parts add a flat ``IMAGE_TOKENS``, other parts count their JSON. A
    ``name`` adds its tokens plus one; ``tool_calls`` count their JSON. Exact for plain-text
    OpenAI chat prompts; an estimate elsewhere. Raises InvalidInputError on a non-mapping message.
    """
    total = REPLY_PRIMING_TOKENS
    encoding = encoding_name_for(model)
    for message in messages:
        if not isinstance(message, Mapping):
            raise InvalidInputError(f"a message must be a mapping, got {type(message)!r}")
        total += TOKENS_PER_MESSAGE
        role, content = message.get("role"), message.get("content")
        # A chat resends its history: a short text's count is one dict lookup.
        if type(role) is str and (known := _counts.get((encoding, role))) is not None:
            total += known
        elif isinstance(role, str):
            total += count_tokens(role, model)
        if type(content) is str and (known := _counts.get((encoding, content))) is not None:
            total += known
        else:
            total += _content_tokens(content, model)
        name = message.get("name")
        if isinstance(name, str) and name:
            total += count_tokens(name, model) + TOKENS_PER_NAME
        tool_calls = message.get("tool_calls")
        if tool_calls:
            total += count_tokens(json.dumps(tool_calls, default=str), model)
    return total


def _content_tokens(content: object, model: str | None) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_tokens(content, model)
    if isinstance(content, list | tuple):
        total = 0
        for part in content:
            if isinstance(part, str):
                total += count_tokens(part, model)
            elif isinstance(part, Mapping):
                kind = part.get("type")
                text = part.get("text")
                if isinstance(text, str):
                    total += count_tokens(text, model)
                elif kind in ("image_url", "image", "input_image"):
                    total += IMAGE_TOKENS
                else:
                    total += count_tokens(json.dumps(part, default=str), model)
        return total
    return count_tokens(json.dumps(content, default=str), model)


def estimate_cost_nanos(
    pricer: Pricer,
    model: str,
    prompt_tokens: int,
    max_tokens: int | None = None,
    default_output_tokens: int = 256,
) -> int:
    """Nano-dollars to reserve before a call: the prompt plus the expected output.

    The output is ``max_tokens`` when given (the most the call can cost), else
    ``default_output_tokens``. Raises InvalidInputError for negative or non-int counts,
    UsageParseError (an InvalidInputError) for counts above ``TokenUsage``'s bound, and
    UnknownModelError under the pricer's "block" policy.
    """
    output = max_tokens if max_tokens is not None else default_output_tokens
    if type(prompt_tokens) is not int or type(output) is not int or not (
            0 <= prompt_tokens <= MAX_TOKENS and 0 <= output <= MAX_TOKENS):
        for what, value in (("prompt_tokens", prompt_tokens), ("output tokens", output)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise InvalidInputError(f"{what} must be a non-negative int, got {value!r}")
        prompt_tokens, output = int(prompt_tokens), int(output)
        TokenUsage(input_tokens=prompt_tokens, output_tokens=output)  # its bound, its error
    return pricer.text_cost(model, prompt_tokens, output)


class StreamTextCounter:
    """Collects streamed text and counts its tokens once, when asked.

    For streams that report no usage, and for streams the consumer stopped early: charge
    ``usage(prompt_tokens)``, i.e. the prompt plus what was streamed so far. Counting once
    at the end is both faster and more exact than summing per-chunk counts (a token can
    straddle two chunks).
    """

    __slots__ = ("_chunks", "_count", "_model")

    def __init__(self, model: str | None = None) -> None:
        self._model = model
        self._chunks: list[str] = []
        self._count: int | None = 0

    def add(self, text: str | None) -> None:
        """Append one streamed text delta (None and "" are ignored)."""
        if text:
            self._chunks.append(text)
            self._count = None

    @property
    def text(self) -> str:
        return "".join(self._chunks)

    def count(self) -> int:
        """Tokens streamed so far (computed once per change)."""
        if self._count is None:
            joined = self.text
            self._chunks = [joined] if joined else []
            self._count = count_tokens(joined, self._model)
        return self._count

    def usage(self, prompt_tokens: int) -> TokenUsage:
        """``TokenUsage`` of prompt plus streamed text. Raises UsageParseError on a bad count."""
        return TokenUsage.of(prompt_tokens, self.count())
