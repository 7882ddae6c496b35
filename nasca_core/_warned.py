"""Which soft-threshold warning (``Tier.warn_at``) came with an SDK response ``wrap()`` returned.

The SDKs' response objects are the provider's data (their ``model_dump()`` is what an app
serialises), so nothing is added to them: ``warning_of(response)`` looks the warning up by
the object's identity, for as long as the object lives.
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from nasca_core._calls import LLMCall
    from nasca_core._thresholds import ThresholdWarning

T = TypeVar("T")
_by_id: dict[int, tuple[weakref.ref[Any], ThresholdWarning]] = {}
_lock = threading.Lock()


def _forget(key: int, ref: weakref.ref[Any]) -> None:
    with _lock:
        if (entry := _by_id.get(key)) is not None and entry[0] is ref:
            del _by_id[key]


def warned(response: T, call: LLMCall) -> T:
    """``response``, remembered with ``call``'s warning when it has one (an object that can't be
    weakly referenced is returned as it is: ``warning_of`` then answers None)."""
    warning = call.warning
    if warning is None:
        return response
    key = id(response)
    try:
        ref = weakref.ref(response, lambda r: _forget(key, r))
    except TypeError:
        return response
    with _lock:
        _by_id[key] = (ref, warning)
    return response


def warning_of(response: Any) -> ThresholdWarning | None:
    """The warning the call that returned ``response`` carried (``wrap()``: a response, or the
    stream it returned), or None: no threshold reached, or not a wrapped call's response."""
    entry = _by_id.get(id(response))
    return entry[1] if entry is not None and entry[0]() is response else None
