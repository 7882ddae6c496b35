"""What this process's queued settles owe, per user: counted in its reads until they land."""

from __future__ import annotations

from nasca_core.stores import SettleOp


class Owed:
    """Per user (``UserKeys.meta``): [settles, the holds they still leave in the store, their
    costs, input tokens, output tokens, model calls, settles whose hold is in the store]
    (``_turns.seen``); kept as the queue changes, so a long outage stays O(1) a settle. A call
    under a lease has no hold of its own: a reserve must not take it out of the in-flight count."""

    __slots__ = ("nanos", "users")

    def __init__(self) -> None:
        self.users: dict[str, list[int]] = {}
        self.nanos = 0  # what the queue holds altogether

    def add(self, op: SettleOp, sign: int) -> None:
        entry = self.users.setdefault(op.keys.meta, [0, 0, 0, 0, 0, 0, 0])
        entry[0] += sign
        entry[1] += sign * op.estimate
        entry[2] += sign * op.cost
        entry[3] += sign * op.input_tokens
        entry[4] += sign * op.output_tokens
        entry[5] += sign * op.calls
        if not op.lease or op.hold_id == op.lease:  # the lease's own hold is in the store
            entry[6] += sign
        self.nanos += sign * op.cost
        if entry[0] <= 0:
            del self.users[op.keys.meta]

    def of(self, meta: str) -> tuple[int, int, int]:
        entry = self.users.get(meta)
        return (entry[0], entry[1], entry[2]) if entry else (0, 0, 0)

    def clear(self) -> None:
        self.users.clear()
        self.nanos = 0
