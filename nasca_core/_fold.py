"""Folding a lease's queued settles into one store settle (the background sender's; no I/O).

The calls a process admits under one budget lease (``_leases``) settle as ordinary settles
that name the lease (``SettleOp.lease``) and hold nothing of their own; the lease's closing
settle (hold id = the lease's) drops the lease's hold. Queued settles of one lease with the
same keys, tier, tiers JSON, compiled tier and reserve time (every call of a lease shares the
lease's) are applied as one ``Fold``: the costs, tokens and calls summed, the latest op's
clock (now, TTLs, marker expiry: its windows are the same keys' windows), a hold id of its
own (a hash of its settles' ids, so the same group planned again is the same fold), or the
lease's when its closing settle is among them (then its estimate, the lease's L, drops
the lease's hold with them). The store's rules make that one settle charge exactly what the
settles one by one would: each window's counter gets the sum, credits are drawn for what the
allowance can't cover, oldest lot first. (Only the split is the batch's: a credit lot expiring
between two of the calls is drawn as of the latest, which spends no less.)

A fold is sent only once its journal line (``{"f": {...its op..., "of": [hold ids]}}``) is on
disk (``_journal``): replayed, it stands for its constituents, and its own hold id makes the
store take it once; when the line can't be written in full, an ``{"u": fold id}`` line gives
its settles back before they go one by one. A fold is never folded again: one that may have
landed is retried as itself, so it is charged once or not at all.

Only what is queued when the sender takes a batch folds (it lingers ``_sender.LINGER_S``
after it is woken, so a burst of one user's calls goes together); nothing is held back.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from hashlib import blake2b

from nasca_core._money import MAX_NANOS
from nasca_core._owed import Owed
from nasca_core.pricing._usage import MAX_TOKENS
from nasca_core.stores import SettleOp

MAX_OF = 1024  # settles one fold may stand for (``_deferred.FOLD_MAX`` a batch): the store marks each


@dataclass(slots=True)
class Fold(SettleOp):
    """One settle standing for the queued settles ``of`` names (by hold id), which the store
    marks settled with it (``SettleOp.of``)."""

    sent: int = 0  # of them, how many the sender was handed (``LedgerStats.settled``); not journaled


@dataclass(slots=True)
class Send:
    """One store settle of a flush and the queued settles it stands for."""

    op: SettleOp
    items: list[SettleOp]


def weight(op: SettleOp) -> int:
    """The queued settles ``op`` stands for."""
    return len(op.of) if isinstance(op, Fold) else 1


def marks(op: SettleOp) -> list[str]:
    """The hold ids the ``{"d"}`` lines of a landed ``op`` name: its own first (the fold's line
    then stands for nothing), then a fold's settles, so an older Nasca replaying the journal
    (it reads no ``{"f"}`` line, only the settles' ``{"s"}``) finds them applied too."""
    return list(dict.fromkeys((op.hold_id, *op.of))) if isinstance(op, Fold) else [op.hold_id]


def waiting(send: Send, sent: set[str], owed: Owed) -> SettleOp:
    """What goes back to the queue for a send that did not land: a fold as itself (its line
    stands for its settles; it may have landed), owed in their place; ``sent`` (the hold ids
    handed to the sender) forgets them, the fold counts them (``Fold.sent``)."""
    if isinstance(fold := send.op, Fold) and len(send.items) > 1:
        fold.sent = sum(op.hold_id in sent for op in send.items)
        sent.difference_update(fold.of)
        for op in send.items:
            owed.add(op, -1)
        owed.add(fold, 1)
    return send.op


class Sends:
    """How many store settles the settles taken for a batch make (``n``): a lease's fold."""

    __slots__ = ("foldable", "leases", "n")

    def __init__(self, foldable: Collection[str]) -> None:
        self.foldable, self.leases, self.n = foldable, set[str](), 0

    def add(self, op: SettleOp) -> SettleOp:
        if not (op.lease in self.leases and op.hold_id in self.foldable):
            self.n += 1
            self.leases.add(op.lease)
        return op


def _key(op: SettleOp, foldable: Collection[str]) -> tuple[object, ...] | None:
    if not op.lease or op.hold_id not in foldable or isinstance(op, Fold):
        return None
    # Equal pools and chunks too: a fold charges each pool its settles drew from, and only
    # those, and takes its cost off the one chunk they were drawn on.
    return (op.lease, op.keys, op.tier, op.tiers_json, op.tier_compiled, op.reserved_ms, op.pools,
            op.chunks)


def plan(ops: Sequence[SettleOp], foldable: Collection[str]) -> list[Send]:
    """The store settles for ``ops`` (in queue order), each group of one lease folded at its
    first settle's place. Only settles named in ``foldable`` fold: never sent, so none of them
    may have landed under its own hold id (a replayed or retried one goes by itself). A group
    closes when a sum would pass ``_LIMITS`` (a Lua number is exact up to 2^53, SQLite's to
    2^63), at ``MAX_OF`` settles, or once it has the lease's closing settle (nothing of a lease
    comes after it)."""
    sends: list[Send] = []
    open_: dict[tuple[object, ...], tuple[Send, list[int]]] = {}  # a group and its running sums
    for op in ops:
        key = _key(op, foldable)
        group = open_.get(key) if key is not None else None
        if group is not None and _fits(group[1], op):
            group[0].items.append(op)
        else:
            group = (Send(op, [op]), _sizes(op))
            sends.append(group[0])
            if key is not None:
                open_[key] = group
        if key is not None and op.hold_id == op.lease:
            del open_[key]
    for send in sends:
        if len(send.items) > 1:
            send.op = fold(send.items)
    return sends


# What a fold sums, each bounded (the settles themselves are: ``MAX_NANOS``, ``MAX_TOKENS``).
_LIMITS = (MAX_OF, MAX_NANOS, MAX_NANOS, MAX_TOKENS, MAX_TOKENS, MAX_TOKENS)


def _sizes(op: SettleOp) -> list[int]:
    return [1, op.cost, op.estimate, op.input_tokens, op.output_tokens, op.calls]


def _fits(sums: list[int], op: SettleOp) -> bool:
    """Whether ``op`` joins a group with ``sums`` (``_sizes``) within ``_LIMITS``; if so, added."""
    after = [s + n for s, n in zip(sums, _sizes(op), strict=True)]
    if any(s > limit for s, limit in zip(after, _LIMITS, strict=True)):
        return False
    sums[:] = after
    return True


def fold(items: Sequence[SettleOp]) -> Fold:
    """The one settle of a lease's ``items`` (two or more, one ``_key``)."""
    last = max(items, key=lambda op: op.now_ms)
    close = next((op for op in items if op.hold_id == op.lease), None)
    fields = {f.name: getattr(last, f.name) for f in dataclasses.fields(SettleOp)}
    of = tuple(op.hold_id for op in items)
    fields.update(hold_id=close.hold_id if close is not None else fold_id(last.lease, of),
                  estimate=sum(op.estimate for op in items), cost=sum(op.cost for op in items),
                  input_tokens=sum(op.input_tokens for op in items),
                  output_tokens=sum(op.output_tokens for op in items),
                  calls=sum(op.calls for op in items), of=of)
    return Fold(**fields)


def fold_id(lease: str, of: Sequence[str]) -> str:
    """A fold's own hold id: the same settles, the same id (a fold planned again after its
    line could not be written is the same settle, never a second one)."""
    return f"{lease}~f{blake2b(chr(0).join(of).encode(), digest_size=9).hexdigest()}"


