"""Who is calling: a context variable set by ``nasca.user(...)``.

A ContextVar follows the code into asyncio tasks (they copy the context when created)
and into threads started with ``contextvars.copy_context().run``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from nasca_core._errors import InvalidUserError

_current: ContextVar[tuple[str, str | None] | None] = ContextVar("nasca_user", default=None)

MAX_USER_ID = 256


# The month's row of every user deleted by a data-protection request (``privacy``).
DELETED_USER = "(deleted user)"


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
    if user_id == DELETED_USER:
        raise InvalidUserError(f"{DELETED_USER!r} holds the monthly totals of deleted users: not a user")
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


def resolve(
    user: str | None,
    tier: str | None,
    ctx: Any,
    get_user_id: Callable[[Any], str] | None,
    get_user_tier: Callable[[Any], str | None] | None,
    default_tier: str | None,
) -> tuple[str, str]:
    """Who is calling and on which tier, by precedence: explicit ``user``, ``get_user_id(ctx)``,
    the ``acting_as`` context; the tier likewise, then ``default_tier``.

    Raises InvalidUserError when none names a user or a tier."""
    if user is None and ctx is not None and get_user_id is not None:
        user = get_user_id(ctx)
        if tier is None and get_user_tier is not None:
            tier = get_user_tier(ctx)
    if user is None:
        current = _current.get()
        if current is not None:
            user = current[0]
            tier = tier if tier is not None else current[1]
    if user is None:
        raise InvalidUserError(
            "No user for this call: pass user=..., wrap the call in `with nasca.user(id):`, "
            "or give Nasca(get_user_id=...)."
        )
    check_user_id(user)
    tier = tier if tier is not None else default_tier
    if tier is None:
        raise InvalidUserError(f"No tier for user {user!r}: pass tier=..., or set Nasca(default_tier=...).")
    return user, tier
