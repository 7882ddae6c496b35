"""Model-name normalisation: ``candidates(name)`` yields ``name``, then each shorter name it
may stand for, in the order ``PriceTable.normalize`` tries them (its docstring lists them)."""

from __future__ import annotations

import re
from collections.abc import Iterator

# Region prefix of Bedrock cross-region inference profiles, then the vendor prefix.
_BEDROCK_REGION = re.compile(r"^(?:us|eu|apac|ap|au|ca|jp|us-gov|global)\.")
_BEDROCK_VENDOR = re.compile(
    r"^(?:anthropic|mistral|meta|amazon|cohere|ai21|deepseek|openai|qwen|xai|google)\."
)
_BEDROCK_VERSION = re.compile(r"-v\d+(?::\d+)?$|:\d+$")
_VERTEX_VERSION = re.compile(r"@[^@/]*$")
# One snapshot/version suffix; stripped repeatedly from the end.
_VERSION_SUFFIX = re.compile(
    r"(?:-\d{4}-\d{2}-\d{2}"  # OpenAI   gpt-4o-2024-08-06
    r"|-\d{8}"  # Anthropic  claude-3-5-sonnet-20241022
    r"|-latest"  # aliases  claude-3-7-sonnet-latest, mistral-large-latest
    r"|-\d{4}"  # Mistral/xAI YYMM/MMDD  mistral-medium-2505, grok-4-0709
    r"|-\d{3})$"  # Gemini  gemini-2.0-flash-001
)
_PREVIEW_DATE = re.compile(r"-preview-\d{2}-\d{2}$")  # gemini-2.5-pro-preview-05-06


def candidates(name: str) -> Iterator[str]:
    s = name
    yield s
    if "models/" in s:  # Vertex / Gemini resource names: publishers/x/models/NAME, models/NAME
        s = s.rsplit("models/", 1)[1]
        yield s
    if "/" in s:  # provider prefixes: openai/, anthropic/, azure/, bedrock/, vertex_ai/ ...
        s = s.rsplit("/", 1)[1]
        yield s
    stripped = _BEDROCK_VENDOR.sub("", _BEDROCK_REGION.sub("", s))
    if stripped != s:
        s = stripped
        yield s
    for pattern in (_VERTEX_VERSION, _BEDROCK_VERSION):
        stripped = pattern.sub("", s)
        if stripped != s:
            s = stripped
            yield s
    stripped = _PREVIEW_DATE.sub("-preview", s)
    if stripped != s:
        s = stripped
        yield s
    while True:
        stripped = _VERSION_SUFFIX.sub("", s)
        if stripped == s or not stripped:
            break
        s = stripped
        yield s
    if s.endswith("-preview"):
        yield s[: -len("-preview")]
