"""The memory store's in-flight holds of one user (the Redis scripts' holds zset and its sum)."""

from __future__ import annotations

import heapq


class Holds:
    """In-flight holds: expiry per member, a heap to expire them in O(log n), and their sum,
    so a reserve costs the same with 1 or 10,000 calls in flight (as in the Lua scripts)."""

    __slots__ = ("heap", "live", "total")

    def __init__(self) -> None:
        self.live: dict[str, tuple[int, int]] = {}  # member -> (expiry ms, amount)
        self.heap: list[tuple[int, str]] = []
        self.total = 0

    def add(self, member: str, amount: int, expiry_ms: int) -> None:
        if member in self.live:
            return
        self.live[member] = (expiry_ms, amount)
        heapq.heappush(self.heap, (expiry_ms, member))
        self.total += amount

    def drop(self, member: str) -> None:
        entry = self.live.pop(member, None)
        if entry is not None:
            self.total -= entry[1]
            if not self.live:
                self.heap.clear()

    def lower(self, member: str, amount: int) -> None:
        """Take ``amount`` off a live member's (floored at 0; an unknown member: nothing)."""
        entry = self.live.get(member)
        if entry is not None:
            left = max(0, entry[1] - amount)
            self.live[member] = (entry[0], left)
            self.total -= entry[1] - left

    def purge(self, now_ms: int) -> None:
        heap = self.heap
        while heap and heap[0][0] <= now_ms:
            expiry, member = heapq.heappop(heap)
            entry = self.live.get(member)
            if entry is not None and entry[0] == expiry:
                del self.live[member]
                self.total -= entry[1]
