"""The old spellings of names that moved from ``Nasca`` to ``nasca.billing``."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from nasca_core.billing._service import Billing

P = ParamSpec("P")
R = TypeVar("R")


def to_billing(method: Callable[Concatenate[Billing, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.billing``'s ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.billing, *args, **kwargs)

    return delegate
