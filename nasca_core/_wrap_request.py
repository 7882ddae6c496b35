"""What ``wrap()`` reads from and changes in an SDK request, per API (pure).

- the prompt, as OpenAI-style messages for the estimate, and the output cap asked for;
- who the end user is, and what of their id goes on to the provider (``SendUser``):
  OpenAI's ``user`` / ``safety_identifier``, Anthropic's ``metadata.user_id``;
- the output cap lowered to what the user can still pay for (``cap_output``).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from hashlib import blake2b
from typing import Any, Literal

from nasca_core._errors import ConfigurationError

Kind = Literal["chat", "responses", "messages", "gemini", "embeddings"]
SendUser = Literal["hash", "raw", "none"]
SEND_USER: tuple[SendUser, ...] = ("hash", "raw", "none")
OPENAI_USER_FIELDS = ("user", "safety_identifier")  # chat, responses (embeddings: user only)


def prompt_of(kind: Kind, kwargs: Mapping[str, Any]) -> tuple[list[dict[str, Any]], int | None]:
    """The request as OpenAI-style messages for the estimate, and its output-token cap."""
    messages: list[dict[str, Any]] = []
    if kind == "embeddings":
        given = kwargs.get("input") or ""
        items = [given] if isinstance(given, str) else list(given)
        # Token-id inputs are counted as their length: each id is one token.
        messages = [{"content": i} if isinstance(i, str) else {"content": " x" * len(i)} for i in items]
        return messages, 0
    if kind == "chat":
        # type() first: isinstance against the Mapping ABC costs more than the copy
        messages = [dict(m) if type(m) is dict or isinstance(m, Mapping) else {"content": str(m)}
                    for m in kwargs.get("messages") or []]
        cap = kwargs.get("max_completion_tokens") or kwargs.get("max_tokens")
    elif kind == "responses":
        if kwargs.get("instructions"):
            messages.append({"role": "system", "content": kwargs["instructions"]})
        given = kwargs.get("input") or ""
        items = [{"role": "user", "content": given}] if isinstance(given, str) else list(given)
        messages += [dict(m) if isinstance(m, Mapping) else {"content": str(m)} for m in items]
        cap = kwargs.get("max_output_tokens")
    elif kind == "messages":
        if kwargs.get("system"):
            messages.append({"role": "system", "content": kwargs["system"]})
        messages += [dict(m) for m in kwargs.get("messages") or []]
        cap = kwargs.get("max_tokens")
    else:
        config = kwargs.get("config")
        system = field_of(config, "system_instruction") if config is not None else None
        if system:
            messages.append({"role": "system", "content": gemini_text(system)})
        messages.append({"role": "user", "content": gemini_text(kwargs.get("contents"))})
        cap = field_of(config, "max_output_tokens") if config is not None else None
    return messages, cap if isinstance(cap, int) and not isinstance(cap, bool) else None


def gemini_text(contents: Any) -> str:
    """The text of google-genai ``contents``: a str, Content/Part objects or dicts, or a list."""
    if contents is None:
        return ""
    if isinstance(contents, str):
        return contents
    if isinstance(contents, list | tuple):
        return "\n".join(gemini_text(c) for c in contents)
    text = field_of(contents, "text")
    if isinstance(text, str):
        return text
    parts = field_of(contents, "parts")
    return gemini_text(list(parts)) if parts else ""


def field_of(obj: Any, name: str) -> Any:
    return obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)


@functools.lru_cache(maxsize=4096)  # per call otherwise: a keyed BLAKE2b of the same few ids
def user_hash(key: str, user_id: str) -> str:
    """A stable, opaque stand-in for ``user_id``, keyed by ``key`` (the app's secret
    ``user_hash_key``; without one, the namespace): what the provider sees by default, the
    same for every call of the user, not the app's own id (OpenAI asks for a hash of the id;
    Anthropic for "a uuid, hash value, or other opaque identifier"). Pseudonymous, not
    anonymous: whoever holds the key can test guessed ids against a hash."""
    secret = key.encode("utf-8", "surrogatepass")
    if len(secret) > 64:  # BLAKE2b's longest key: a longer secret is used whole, hashed
        secret = blake2b(secret).digest()
    digest = blake2b(user_id.encode("utf-8", "surrogatepass"), digest_size=16, key=secret)
    return f"nasca-{digest.hexdigest()}"


def check_send_user(send_user: object) -> SendUser:
    """Raises ConfigurationError for anything but "hash", "raw" or "none"."""
    for option in SEND_USER:
        if send_user == option:
            return option
    raise ConfigurationError(f"send_user must be one of {SEND_USER}, got {send_user!r}")


def take_user(kind: Kind, kwargs: dict[str, Any], send_user: SendUser, key: str) -> tuple[Any, Any]:
    """The end user the request names: explicitly (``user=``: Nasca's keyword, and OpenAI's
    ``user`` field, one keyword), and as a last fallback (OpenAI's ``safety_identifier``,
    Anthropic's ``metadata.user_id``: some apps put a session id there, so they never beat
    ``get_user_id(ctx)`` or ``nasca.user()``). Leaves in ``kwargs`` what the provider may
    see of them: their hash ("hash"), nothing ("none"), or the ids themselves ("raw")."""
    # a non-str id is returned as it is: the ledger refuses it with a clear InvalidUserError
    if kind not in ("chat", "responses", "embeddings"):
        explicit = kwargs.pop("user", None)
        metadata = kwargs.get("metadata")
        if kind != "messages" or not isinstance(metadata, Mapping) or "user_id" not in metadata:
            return explicit, None
        fallback = metadata["user_id"]
        if send_user != "raw":
            rest = {k: v for k, v in metadata.items() if k != "user_id"}
            if send_user == "hash" and isinstance(fallback, str):
                rest["user_id"] = user_hash(key, fallback)
            if rest:
                kwargs["metadata"] = rest
            else:
                kwargs.pop("metadata")
        return explicit, fallback
    fields = OPENAI_USER_FIELDS if kind != "embeddings" else OPENAI_USER_FIELDS[:1]
    explicit, fallback = kwargs.get("user"), kwargs.get("safety_identifier") if kind != "embeddings" else None
    for f in fields:
        if f in kwargs and send_user != "raw":
            value = kwargs.pop(f)
            if send_user == "hash" and isinstance(value, str):
                kwargs[f] = user_hash(key, value)
    return explicit, fallback


RESPONSES_MIN_CAP = 16  # the Responses API refuses a smaller max_output_tokens
THINKING_MIN_BUDGET = 1024  # Anthropic's least thinking.budget_tokens, below max_tokens


def lower_cap(kind: Kind, kwargs: dict[str, Any], cap: int) -> None:
    """Ask for at most ``cap`` output tokens: the parameter the caller set, else the API's own
    (Chat Completions: ``max_completion_tokens`` unless only ``max_tokens`` was set), raised to
    what the API accepts: 16 on Responses; with Anthropic's extended thinking, the budget is
    lowered below the cap, and the cap is at least 1,025 (a budget of at least 1,024)."""
    if kind == "chat":
        name = "max_tokens" if "max_tokens" in kwargs and "max_completion_tokens" not in kwargs \
            else "max_completion_tokens"
        kwargs[name] = cap
    elif kind == "responses":
        kwargs["max_output_tokens"] = max(cap, RESPONSES_MIN_CAP)
    elif kind == "messages":
        thinking = kwargs.get("thinking")
        if isinstance(thinking, Mapping) and thinking.get("type") == "enabled" and isinstance(
                budget := thinking.get("budget_tokens"), int) and budget >= cap:
            cap = max(cap, THINKING_MIN_BUDGET + 1)
            kwargs["thinking"] = {**thinking, "budget_tokens": min(budget, cap - 1)}
        kwargs["max_tokens"] = cap
    elif kind == "gemini":
        config = kwargs.get("config")
        if config is None or isinstance(config, Mapping):
            kwargs["config"] = {**(config or {}), "max_output_tokens": cap}
        else:  # a GenerateContentConfig (pydantic): a copy with the cap
            kwargs["config"] = config.model_copy(update={"max_output_tokens": cap})
