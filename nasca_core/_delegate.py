"""Nasca methods that are ``nasca.billing``'s, ``nasca.live``'s, ``nasca.limits``',
``nasca.deferred``'s, ``nasca.leases``' or ``nasca.pools``'."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Concatenate, ParamSpec, TypeVar

if TYPE_CHECKING:
    from nasca_core._deferred import DeferredSettles
    from nasca_core._leases import Leases
    from nasca_core._limits import Limits
    from nasca_core._live import LiveConfig
    from nasca_core._pools import Pools
    from nasca_core.billing._service import Billing

P = ParamSpec("P")
R = TypeVar("R")


def to_billing(method: Callable[Concatenate[Billing, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.billing``'s ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.billing, *args, **kwargs)

    return delegate


def to_live(method: Callable[Concatenate[LiveConfig, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.live``'s ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.live, *args, **kwargs)

    return delegate


def to_deferred(method: Callable[Concatenate[DeferredSettles, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.deferred``'s ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.deferred, *args, **kwargs)

    return delegate


def to_limits(method: Callable[Concatenate[Limits, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.limits``' ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.limits, *args, **kwargs)

    return delegate


def to_leases(method: Callable[Concatenate[Leases, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.leases``' ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.leases, *args, **kwargs)

    return delegate


def to_pools(method: Callable[Concatenate[Pools, P], R]) -> Callable[Concatenate[Any, P], R]:
    """A Nasca method that calls ``nasca.pools``' ``method``: same signature, same docs."""

    @functools.wraps(method)
    def delegate(self: Any, /, *args: P.args, **kwargs: P.kwargs) -> R:
        return method(self.pools, *args, **kwargs)

    return delegate
