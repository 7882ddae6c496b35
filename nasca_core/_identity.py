"""Who is calling: a context variable set by ``nasca.user(...)``.

A ContextVar follows the code into asyncio tasks (they copy the context when created)
and into threads started with ``contextvars.copy_context().run``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from nasca_core._errors import InvalidUserError

_current: ContextVar[tuple[str, str | None] | None] = ContextVar("nasca_user", default=None)

MAX_USER_ID = 256


def check_user_id(user_id: object) -> str:
    """Raises InvalidUserError unless ``user_id`` is a usable non-empty string."""
    if not isinstance(user_id, str):
        raise InvalidUserError(
            f"user id must be a str, got {type(user_id).__name__} {user_id!r}: "
            "convert it, e.g. str(user.id)."
        )
    if not user_id.strip():
        raise InvalidUserError("user id must be a non-empty string")
    if len(user_id) > MAX_USER_ID or not user_id.isprintable():
        raise InvalidUserError(
            f"user id must be at most {MAX_USER_ID} printable characters, got {user_id[:40]!r}..."
        )
    return user_id


def current() -> tuple[str, str | None] | None:
    return _current.get()


@contextmanager
def acting_as(user_id: str, tier: str | None) -> Iterator[None]:
    token = _current.set((check_user_id(user_id), tier))
    try:
        yield
    finally:
        _current.reset(token)
