"""Compiled prices: integer nano-dollars per 1M units for every billed dimension.

Whatever the source (genai-prices or an owner's price), a model's prices are compiled once
into ``Rates``; a cost is then a dozen integer multiplications and one rounded division:

    cost = uncached text input * input      + cache_read * cache_read
         + 5-minute cache writes * cache_write + 1-hour cache writes * cache_write_1h
         + input audio * input_audio         + input image * input_image
         + text output * output              + reasoning * reasoning
         + output audio * output_audio       + output image * output_image
         + web searches * web_search         + file searches * file_search
         + code containers * code_container  + one request fee

A long-context tier replaces every rate of the whole call when its input tokens are above
the tier's threshold (how Anthropic, Google and OpenAI bill it).
"""

from __future__ import annotations

import bisect
import math
import time

from nasca_core.pricing._usage import TokenUsage

PER_MILLION = 1_000_000
_HALF = PER_MILLION // 2

# Order of a rate tuple; every entry is nano-dollars per 1M units (tokens, searches, requests).
RATE_FIELDS = (
    "input",
    "cache_read",
    "cache_write",
    "cache_write_1h",
    "input_audio",
    "input_image",
    "output",
    "reasoning",
    "output_audio",
    "output_image",
    "web_search",
    "file_search",
    "code_container",
    "request",
)
RateTuple = tuple[int, int, int, int, int, int, int, int, int, int, int, int, int, int]


class Rates:
    """One model's compiled prices under one price context: base rates and tiers."""

    __slots__ = ("base", "expires", "tiers")

    def __init__(
        self, base: RateTuple, tiers: tuple[tuple[int, RateTuple], ...] = (), *, expires: float = math.inf
    ) -> None:
        self.base = base
        # Highest threshold first: the first one the input is above applies.
        self.tiers = tuple(sorted(tiers, key=lambda t: -t[0]))
        self.expires = expires  # epoch seconds when a dated price change makes these stale

    def cost(self, u: TokenUsage) -> int:
        inp = u.input_tokens
        rates = self.base
        for threshold, tier_rates in self.tiers:
            if inp > threshold:
                rates = tier_rates
                break
        p_in, p_cr, p_cw, p_cw1h, p_ia, p_ii, p_out, p_rs, p_oa, p_oi, p_ws, p_fs, p_cc, p_req = rates
        cr = u.cache_read_tokens
        cw = u.cache_write_tokens
        cw1h = u.cache_write_1h_tokens
        ia = u.input_audio_tokens
        ii = u.input_image_tokens
        rs = u.reasoning_tokens
        oa = u.output_audio_tokens
        oi = u.output_image_tokens
        total = (
            (inp - cr - cw - ia - ii) * p_in
            + cr * p_cr
            + (cw - cw1h) * p_cw
            + cw1h * p_cw1h
            + ia * p_ia
            + ii * p_ii
            + (u.output_tokens - rs - oa - oi) * p_out
            + rs * p_rs
            + oa * p_oa
            + oi * p_oi
            + u.web_searches * p_ws
            + u.file_searches * p_fs
            + u.code_containers * p_cc
            + p_req
        )
        return (total + _HALF) // PER_MILLION  # round half up, once

    def text_cost(self, input_tokens: int, output_tokens: int) -> int:
        """``cost()`` of a usage with only input and output tokens (a call's estimate), without
        building one: a TokenUsage costs more to make than to price."""
        rates = self.base
        for threshold, tier_rates in self.tiers:
            if input_tokens > threshold:
                rates = tier_rates
                break
        return (input_tokens * rates[0] + output_tokens * rates[6] + rates[13] + _HALF) // PER_MILLION

    @property
    def is_zero(self) -> bool:
        """True when input tokens would be free: no paid model bills input at $0."""
        return self.base[0] == 0 or not any(self.base)

    def as_dict(self) -> dict[str, int]:
        return dict(zip(RATE_FIELDS, self.base, strict=True))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Rates) and (self.base, self.tiers) == (other.base, other.tiers)

    def __hash__(self) -> int:
        return hash((self.base, self.tiers))

    def __repr__(self) -> str:
        return f"Rates({self.as_dict()!r}, tiers={[t for t, _ in self.tiers]!r})"


class TimedRates(Rates):
    """Rates that change with the UTC time of day (DeepSeek's peak and off-peak prices).

    ``segments`` are ``(seconds after UTC midnight, Rates)`` from 0 on; the rates of the
    segment the call ends in apply. ``base``/``tiers`` describe the segment in force when
    compiled (what ``nasca prices`` shows).
    """

    __slots__ = ("_rates", "_starts")

    def __init__(self, segments: list[tuple[int, Rates]], now: float, *, expires: float = math.inf) -> None:
        segments = sorted(segments, key=lambda s: s[0])
        self._starts = [start for start, _ in segments]
        self._rates = [rates for _, rates in segments]
        current = self._at(now)
        super().__init__(current.base, current.tiers, expires=expires)

    def _at(self, epoch: float) -> Rates:
        return self._rates[bisect.bisect_right(self._starts, int(epoch % 86_400)) - 1]

    def cost(self, u: TokenUsage) -> int:
        return self._at(time.time()).cost(u)

    def text_cost(self, input_tokens: int, output_tokens: int) -> int:
        return self._at(time.time()).text_cost(input_tokens, output_tokens)
