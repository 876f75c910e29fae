"""Rate limits: RPM/TPM allowances of three shapes, their `x-ratelimit-*` headers, and the 429s.

    sliding  at most `limit` in any `window_s` seconds (OpenAI's per-minute limits, which it may
             enforce over shorter periods)
    fixed    at most `limit` in each window of `window_s` seconds, back to back
    bucket   a bucket of `limit` refilled continuously: bursts up to `limit`, then the rate
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from batchrun.sim.config import SimConfig

DEFAULT_MAX_TOKENS = 1024  # TPM charge when a request sets no max_tokens


def format_duration(seconds: float) -> str:
    """A duration in Go's format as OpenAI sends it: `12ms`, `1s`, `1m30.5s`, `6m0s`, `1h0m0s`."""
    ms = round(seconds * 1000) if seconds > 0 else 0
    if seconds > 0 and ms == 0:
        ms = 1  # never tell a client "0s" while something is still pending
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, frac = divmod(rest, 1000)
    sec = f"{secs}.{frac:03d}".rstrip("0") if frac else str(secs)
    if hours:
        return f"{hours}h{minutes}m{sec}s"
    return f"{minutes}m{sec}s" if minutes else f"{sec}s"


class _Allowance:
    """What the three shapes share: the limit per `span` seconds, `used` of it, the headers."""

    __slots__ = ("per_minute", "limit", "span", "scale", "used", "_names")

    def __init__(self, per_minute: int, span: float, unit: str) -> None:
        self.per_minute = per_minute
        self.limit = max(1.0, per_minute * span / 60.0)  # an allowance that admits nothing is useless
        self.span = span
        self.scale = 60.0 / span  # window amounts -> per-minute amounts for headers and messages
        self.used: float = 0
        self._names = tuple(f"x-ratelimit-{k}-{unit}" for k in ("limit", "remaining", "reset"))

    def _headers(self, reset: float) -> dict[str, str]:
        # Remaining is scaled to per-minute units so remaining/limit is the true free fraction.
        remaining = max(0, int((self.limit - self.used) * self.scale + 1e-6))  # no float dust
        names = self._names
        return {names[0]: str(self.per_minute), names[1]: str(remaining),
                names[2]: format_duration(max(0.0, reset))}


class Window(_Allowance):
    """A sliding window of charges; `limit` is the allowance in any `span` seconds."""

    __slots__ = ("_charges",)

    def __init__(self, per_minute: int, span: float, unit: str) -> None:
        super().__init__(per_minute, span, unit)
        self._charges: deque[tuple[float, int]] = deque()

    def expire(self, now: float) -> None:
        edge, charges = now - self.span, self._charges
        while charges and charges[0][0] <= edge:
            self.used -= charges.popleft()[1]

    def charge(self, now: float, amount: int) -> None:
        self._charges.append((now, amount))
        self.used += amount

    def wait(self, now: float, amount: int) -> float:
        """Seconds until `amount` more fits in the window (0 when it fits now)."""
        self.expire(now)
        excess = self.used + amount - self.limit
        if excess <= 0:
            return 0.0
        for at, charged in self._charges:
            excess -= charged
            if excess <= 0:
                return at + self.span - now
        return self.span

    def headers(self, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers; reset is when the oldest charge leaves the window."""
        self.expire(now)
        return self._headers(self._charges[0][0] + self.span - now if self._charges else 0.0)

    def refund_last(self) -> None:
        """Take back the latest charge (one made with no await since, so it is still the latest)."""
        self.used -= self._charges.pop()[1]


class FixedWindow(_Allowance):
    """Windows of `span` seconds back to back from the simulator's clock zero, `limit` in each,
    all of it back at the window's end (a provider counting per calendar second or minute)."""

    __slots__ = ("_end", "_last")

    def __init__(self, per_minute: int, span: float, unit: str) -> None:
        super().__init__(per_minute, span, unit)
        self._end = -math.inf  # when the current window ends
        self._last = 0

    def expire(self, now: float) -> None:
        if now >= self._end:
            self.used = 0
            self._end = (math.floor(now / self.span) + 1) * self.span

    def charge(self, now: float, amount: int) -> None:
        self.expire(now)
        self.used += amount
        self._last = amount

    def wait(self, now: float, amount: int) -> float:
        """Seconds until `amount` more fits (0 when it fits now): the next window's start."""
        self.expire(now)
        return 0.0 if self.used + amount <= self.limit else self._end - now

    def headers(self, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers; reset is the window's end, when all of it is back."""
        self.expire(now)
        return self._headers(self._end - now)

    def refund_last(self) -> None:
        """Take back the latest charge (made with no await since, so in this same window)."""
        self.used -= self._last


class Bucket(_Allowance):
    """A bucket holding at most `limit` (the allowance of `span` seconds), refilled continuously
    at `per_minute` / 60 a second; a charge takes its amount out, `used` is what is missing."""

    __slots__ = ("_rate", "_at", "_last")

    def __init__(self, per_minute: int, span: float, unit: str) -> None:
        super().__init__(per_minute, span, unit)
        self._rate = per_minute / 60.0
        self._at: float | None = None  # when `used` was last brought up to date
        self._last = 0

    def expire(self, now: float) -> None:
        if self._at is not None and now > self._at:
            self.used = max(0.0, self.used - (now - self._at) * self._rate)
        self._at = now if self._at is None else max(self._at, now)

    def charge(self, now: float, amount: int) -> None:
        self.expire(now)
        self.used += amount  # every arrival that counts, refused ones too (RPM), may overdraw it
        self._last = amount

    def wait(self, now: float, amount: int) -> float:
        """Seconds until the bucket holds `amount` more (0 when it does now)."""
        self.expire(now)
        excess = self.used + amount - self.limit
        return excess / self._rate if excess > 1e-9 else 0.0  # a refill's float dust fits

    def headers(self, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers; reset is when the bucket is full again."""
        self.expire(now)
        return self._headers(self.used / self._rate)

    def refund_last(self) -> None:
        """Take back the latest charge."""
        self.used -= self._last


SHAPES: dict[str, type[Window | FixedWindow | Bucket]] = {
    "sliding": Window, "fixed": FixedWindow, "bucket": Bucket,
}


def retry_headers(seconds: float) -> dict[str, str]:
    """`retry-after-ms` and `retry-after` for a wait of `seconds`, rounded up."""
    return {
        "retry-after-ms": str(max(1, math.ceil(seconds * 1000))),
        "retry-after": str(max(1, math.ceil(seconds))),
    }


@dataclass(frozen=True, slots=True)
class Refusal:
    """A 429 the limits give: its message, OpenAI error type, and retry hint (None: waiting won't help)."""

    message: str
    type_: str
    wait: float | None


@dataclass(frozen=True, slots=True)
class LimitSpec:
    """What one set of limits enforces: the simulator's own (every request) or one key's."""

    rpm: int | None
    tpm: int | None
    window_s: float
    shape: str
    max_concurrency: int | None
    send_headers: bool = True
    latency: float = 0.0  # the retry hint of a concurrency 429


class Limits:
    """RPM and TPM windows and a concurrency cap: the simulator's own, or one key's."""

    def __init__(self, config: SimConfig | LimitSpec) -> None:
        if isinstance(config, SimConfig):
            config = LimitSpec(config.rpm, config.tpm, config.window_s, config.limit_shape,
                               config.max_concurrency, config.rate_limit_headers, config.latency)
        self.spec = spec = config
        shape = SHAPES[spec.shape]
        self.rpm = shape(spec.rpm, spec.window_s, "requests") if spec.rpm else None
        self.tpm = shape(spec.tpm, spec.window_s, "tokens") if spec.tpm else None
        self.send_headers = spec.send_headers and bool(self.rpm or self.tpm)

    def arrive(self, now: float) -> float:
        """Charge one arrival to RPM (every arrival counts, accepted or not, as on OpenAI); the wait owed."""
        rpm = self.rpm
        if rpm is None:
            return 0.0
        rpm.expire(now)
        rpm.charge(now, 1)
        return rpm.wait(now, 1) if rpm.used > rpm.limit else 0.0

    def refund_arrival(self) -> None:
        """Take back the latest arrival charged to RPM (a request the provider did not count)."""
        if self.rpm is not None:
            self.rpm.refund_last()

    def check(
        self,
        model: str,
        prompt_tokens: int,
        max_tokens: int | None,
        now: float,
        rpm_wait: float,
        in_flight: int,
    ) -> Refusal | None:
        """A refusal when RPM, concurrency or TPM refuses this request; charges nothing (`admit`)."""
        spec = self.spec
        if rpm_wait and self.rpm:
            used = round((self.rpm.used - 1) * self.rpm.scale)
            return Refusal(
                f"Rate limit reached for requests per min (RPM) on {model}: Limit {spec.rpm}, "
                f"Used {used}, Requested 1. Please try again in {format_duration(rpm_wait)}.",
                "requests",
                rpm_wait,
            )
        if spec.max_concurrency is not None and in_flight > spec.max_concurrency:
            message = f"Too many concurrent requests: Limit {spec.max_concurrency}."
            return Refusal(message, "requests", max(spec.latency, 0.05))
        if self.tpm:
            return self._check_tokens(model, token_charge(prompt_tokens, max_tokens), now)
        return None

    def admit(self, prompt_tokens: int, max_tokens: int | None, now: float) -> None:
        """Charge an admitted request to TPM: prompt + max_tokens at arrival, never refunded, as
        OpenAI counts it (a request refused by any limit is charged nothing)."""
        if self.tpm:
            self.tpm.charge(now, token_charge(prompt_tokens, max_tokens))

    def _check_tokens(self, model: str, cost: int, now: float) -> Refusal | None:
        tpm, limit = self.tpm, self.spec.tpm
        assert tpm is not None
        asked = round(cost * tpm.scale)
        if cost > tpm.limit:  # no retry hint: waiting cannot make it fit
            return Refusal(
                f"Request too large for {model} on tokens per min (TPM): Limit {limit}, "
                f"Requested {asked}. The input or output tokens must be reduced in order to "
                "run successfully.",
                "tokens",
                None,
            )
        wait = tpm.wait(now, cost)
        if wait:
            used = round(tpm.used * tpm.scale)
            return Refusal(
                f"Rate limit reached for tokens per min (TPM) on {model}: Limit {limit}, "
                f"Used {used}, Requested {asked}. Please try again in {format_duration(wait)}.",
                "tokens",
                wait,
            )
        return None

    def headers(self, now: float) -> dict[str, str]:
        """The `x-ratelimit-*` headers as of now (empty when disabled or unlimited)."""
        headers: dict[str, str] = {}
        if self.send_headers:
            if self.rpm:
                headers.update(self.rpm.headers(now))
            if self.tpm:
                headers.update(self.tpm.headers(now))
        return headers


def token_charge(prompt_tokens: int, max_tokens: int | None) -> int:
    """What a request costs in TPM: its prompt plus the answer it may get."""
    return prompt_tokens + (max_tokens or DEFAULT_MAX_TOKENS)
