"""The admin login throttle, shared through the store so every worker and process counts
the same failures, and the client it counts: the peer, or the address a trusted proxy
forwarded (an IPv6 client by its /64, which one host usually holds whole).

Per client: ``burst`` wrong tokens, then one more try each time a block of 2, 4, 8 ...
seconds (at most ``max_backoff``) has passed; the count starts over ``window`` seconds after
the client's first failure. A wrong token is counted (one atomic store ``tally``) before
the answer is decided, so wrong tokens sent at once can't all pass one check: of any number
of concurrent guesses at most ``burst`` + 1 are answered. The right token is let in unless
its client is blocked (answering it while the client is blocked would tell a guesser it was
right), and is never counted: bearer API clients are not throttled by their own calls.

There is no cap over all clients: it would let anyone lock the real admin out by sending
wrong tokens, and it buys little against a guesser with many addresses, because an admin
token must need 10**14 guesses or more (``token_weakness``): at about 14 tries per window
per address (the burst, then blocks of 2 ... 256 s; some 1,350 a day), a million addresses
would need about 20 years for a one-in-ten chance against the weakest token accepted, and
a generated one (``nasca serve --new-admin-token``, ~10**22) is out of reach.
"""

from __future__ import annotations

import ipaddress
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from nasca_core.stores import StoreHandle

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def client_ip(peer: str | None, forwarded_for: Sequence[str], trusted: Sequence[Network]) -> str:
    """Who sent a request: the peer's address, unless the peer is a trusted proxy; then the
    nearest address in ``X-Forwarded-For`` (read from the right, as each proxy appends the
    address it saw) that is not a trusted proxy itself. An entry that is not an address
    stops the walk there: what lies left of it was written by the client. Addresses come
    back normalised: an IPv4-mapped IPv6 address as IPv4, a hop's port and brackets
    (``203.0.113.5:4711``, ``[2001:db8::1]:443``) dropped."""
    if peer is None:
        return "?"
    ip = _address(peer)
    if ip is None or not any(ip in net for net in trusted):
        return str(ip or peer)
    hops = [h.strip() for header in forwarded_for for h in header.split(",") if h.strip()]
    client = ip
    for hop in reversed(hops):
        address = _address(_host(hop))
        if address is None:
            break
        client = address
        if not any(address in net for net in trusted):
            break
    return str(client)


def client_key(client: str) -> str:
    """What the throttle counts a client under: an IPv6 address by its /64."""
    ip = _address(client)
    if isinstance(ip, ipaddress.IPv6Address):
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return client


def _host(hop: str) -> str:
    if hop.startswith("["):  # [2001:db8::1] or [2001:db8::1]:443
        return hop[1:hop.find("]")] if "]" in hop else hop
    return hop.partition(":")[0] if hop.count(":") == 1 else hop  # 203.0.113.5:4711


def _address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    return (ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None) or ip


class LoginThrottle:
    """Admin token attempts, counted in the store under ``<namespace>:admin:login:``."""

    MAX_STRIKES = 30  # 2**30 s is past any max_backoff: the exponent stops growing there

    def __init__(self, store: StoreHandle, namespace: str, *, burst: int = 5, window: float = 900.0,
                 max_backoff: float = 900.0) -> None:
        self.store, self.burst = store, burst
        self.window_ms, self.max_backoff = int(window * 1000), max_backoff
        self._key = f"{namespace}:admin:login"

    async def attempt(self, client: str, right: bool, now: float) -> int:
        """One token from ``client`` (``right``: whether it is the admin token). Answers the
        whole seconds the client must wait, 0 when the token may be answered (let in when
        right, refused as wrong otherwise). Raises StoreError."""
        store, now_ms, who = self.store.for_loop(), int(now * 1000), client_key(client)
        block = f"{self._key}:block:{who}"
        if right:
            blocked, until = await store.tally(block, 0, 0, now_ms)
            return _seconds(until - now_ms) if blocked else 0
        failures, _ = await store.tally(f"{self._key}:fail:{who}", 1, self.window_ms, now_ms)
        if failures < self.burst:
            return 0
        # From the burst-th failure on, each wrong token asks for the block: the one that
        # starts it (no block was running) is answered, the others wait for it to end.
        strikes = min(failures - self.burst + 1, self.MAX_STRIKES)
        seen, until = await store.tally(block, 1, int(min(self.max_backoff, 2.0 ** strikes) * 1000), now_ms)
        return 0 if seen == 1 or failures <= self.burst else _seconds(until - now_ms)


def _seconds(ms: int) -> int:
    return math.ceil(ms / 1000) if ms > 0 else 0
