"""What the simulator is told: its limits and fault rates (SimConfig), its keys (Account),
per-request steps, and the script."""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass

LIMIT_SHAPES = ("sliding", "fixed", "bucket")


@dataclass(frozen=True)
class Account:
    """One key the simulator accepts, with limits and credits of its own (sim/accounts.py).

    Its rpm, tpm and max_concurrency count only this key's requests, on top of the simulator's
    own limits (which count every request, as an organization's limits do); window_s and
    limit_shape default to the simulator's. `credits` is a balance in USD, spent at the
    simulator's price per answer (sim/usage.py): once it is used up, every request with this
    key gets a 402.
    """

    key: str
    rpm: int | None = None
    tpm: int | None = None
    window_s: float | None = None
    limit_shape: str | None = None
    max_concurrency: int | None = None
    credits: float | None = None

    def __post_init__(self) -> None:
        if not self.key:
            raise ValueError("an account needs a non-empty key")
        if self.limit_shape is not None and self.limit_shape not in LIMIT_SHAPES:
            raise ValueError(f"limit_shape must be one of {', '.join(LIMIT_SHAPES)}, "
                             f"not {self.limit_shape!r}")
        for name in ("rpm", "tpm", "max_concurrency"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"an account's {name} must be >= 1")
        if self.window_s is not None and self.window_s <= 0:
            raise ValueError("an account's window_s must be > 0")
        if self.credits is not None and self.credits < 0:
            raise ValueError("an account's credits must be >= 0")


@dataclass(frozen=True)
class SimConfig:
    """How the simulator limits, delays and fails; rpm/tpm are per minute, enforced per `window_s`."""

    rpm: int | None = None
    tpm: int | None = None
    window_s: float = 60.0  # allowance in any window = rpm * window_s / 60 (likewise tpm)
    # How the allowance is counted (sim/windows.py): "sliding" (any window_s seconds), "fixed"
    # (back-to-back windows of window_s) or "bucket" (holding window_s seconds' worth, refilled
    # continuously).
    limit_shape: str = "sliding"
    max_concurrency: int | None = None
    latency: float = 0.0
    latency_jitter: float = 0.0
    fail_rate: float = 0.0
    drop_rate: float = 0.0
    hang_rate: float = 0.0
    garbage_rate: float = 0.0
    # A busy provider's 429 at any pace: retry-after 1, no x-ratelimit-* headers, charged to nothing.
    stray_429_rate: float = 0.0
    # The provider's tokenizer against ours: it bills, limits and reports ratio x our prompt count.
    tokenizer_ratio: float = 1.0
    hang_s: float = 3600.0
    api_key: str | None = None
    error_style: str = "openai"
    models: tuple[str, ...] | None = None
    rate_limit_headers: bool = True
    max_body_bytes: int = 10_000_000
    seed: int = 0
    # The Batch API (sim/batches.py). batch_api=False: a provider without one (404 on files, batches).
    batch_api: bool = True
    batch_validating_s: float = 0.0  # how long a new batch stays validating
    batch_lines_per_s: float = 1000.0  # how fast a batch's lines are answered
    batch_duration_s: float | None = None  # or: every batch takes this long in progress (0: at once)
    batch_expire_after_s: float | None = None  # a batch expires this long after its creation
    batch_expire_after_fraction: float | None = None  # or once this share of its lines is done
    batch_fail_rate: float = 0.0  # share of lines answered 500 in the error file (not billed)
    batch_shuffle: bool = False  # output and error lines in a seeded random order
    batch_max_lines: int = 50_000
    batch_max_bytes: int = 200 * 1024 * 1024
    # Several keys, each with its own limits and credits; `api_key`, if set too, is one more key
    # limited only by the simulator's own limits.
    accounts: tuple[Account, ...] = ()
    # Context windows per model (prompt + max_tokens, else the prompt alone); other models: 128k.
    context_lengths: Mapping[str, int] | None = None
    # Cached prompt tokens (usage.prompt_tokens_details.cached_tokens, sim/usage.py): the
    # longest prefix this key sent before, in blocks of 128 tokens, for prompts of at least
    # cache_min_tokens; or, with cached_share, that share of every prompt.
    prompt_cache: bool = False
    cache_min_tokens: int = 1024
    cached_share: float | None = None
    # Reasoning models: this share of their completion tokens is reasoning
    # (usage.completion_tokens_details.reasoning_tokens, counted inside completion_tokens).
    reasoning_models: tuple[str, ...] = ()
    reasoning_share: float = 0.5
    # USD per million input, cached input and output tokens per model (sim/usage.py has the
    # defaults); report_cost adds usage.cost to each answer, as OpenRouter does.
    prices: Mapping[str, tuple[float, float, float]] | None = None
    report_cost: bool = False

    def __post_init__(self) -> None:
        if self.error_style not in ("openai", "llmost"):
            raise ValueError(f"error_style must be 'openai' or 'llmost', not {self.error_style!r}")
        if self.limit_shape not in LIMIT_SHAPES:
            raise ValueError(f"limit_shape must be one of {', '.join(LIMIT_SHAPES)}, "
                             f"not {self.limit_shape!r}")
        rates = self.fault_rates
        if any(r < 0 for r in rates) or sum(rates) > 1:
            raise ValueError("fault rates must be >= 0 and sum to at most 1")
        if not 0 <= self.stray_429_rate <= 1:
            raise ValueError("stray_429_rate must be between 0 and 1")
        if not self.tokenizer_ratio > 0:
            raise ValueError("tokenizer_ratio must be > 0")
        self._check_batch()
        self._check_usage()

    def _check_usage(self) -> None:
        keys = [a.key for a in self.accounts] + ([self.api_key] if self.api_key is not None else [])
        if len(set(keys)) != len(keys):
            raise ValueError("each account needs a key of its own (and not api_key's)")
        if any(n < 1 for n in (self.context_lengths or {}).values()):
            raise ValueError("context lengths must be >= 1")
        if self.cached_share is not None and not 0 <= self.cached_share <= 1:
            raise ValueError("cached_share must be between 0 and 1")
        if self.cache_min_tokens < 0:
            raise ValueError("cache_min_tokens must be >= 0")
        if not 0 <= self.reasoning_share < 1:
            raise ValueError("reasoning_share must be >= 0 and < 1")
        for model, price in (self.prices or {}).items():
            if len(price) != 3 or any(p < 0 for p in price):
                raise ValueError(f"the price of {model} must be three amounts >= 0 "
                                 "(input, cached input, output per million tokens)")

    def _check_batch(self) -> None:
        if not self.batch_lines_per_s > 0 or min(self.batch_duration_s or 0, self.batch_validating_s) < 0:
            raise ValueError("batch_lines_per_s must be > 0; batch_duration_s and batch_validating_s >= 0")
        if self.batch_expire_after_s is not None and self.batch_expire_after_s <= 0:
            raise ValueError("batch_expire_after_s must be > 0")
        for name in ("batch_expire_after_fraction", "batch_fail_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.batch_max_lines < 1 or self.batch_max_bytes < 1:
            raise ValueError("batch_max_lines and batch_max_bytes must be >= 1")
        if self.window_s <= 0 or self.latency < 0 or self.latency_jitter < 0:
            raise ValueError("window_s must be > 0; latency and jitter >= 0")

    @property
    def fault_rates(self) -> tuple[float, float, float, float]:
        """The fail, drop, hang and garbage rates, in the order they are drawn."""
        return (self.fail_rate, self.drop_rate, self.hang_rate, self.garbage_rate)


@dataclass(frozen=True)
class Step:
    """What the simulator does with one request; build with the classmethods."""

    kind: str
    http_status: int = 200
    message: str | None = None
    code_str: str | None = None
    type_: str | None = None
    retry_after: float | str | None = None
    retry_after_ms: int | None = None
    seconds: float | None = None
    reason: str | None = None
    payload: bytes = b""
    headers: tuple[tuple[str, str], ...] = ()
    size: int = 0

    @classmethod
    def ok(cls) -> Step:
        """Answer normally (no random fault)."""
        return cls("ok")

    @classmethod
    def status(
        cls,
        code: int,
        message: str | None = None,
        *,
        code_str: str | None = None,
        type_: str | None = None,
        retry_after: float | str | None = None,
        retry_after_ms: int | None = None,
    ) -> Step:
        """An error response with this HTTP status and a body in the configured style."""
        return cls("status", code, message, code_str, type_, retry_after, retry_after_ms)

    @classmethod
    def drop(cls) -> Step:
        """Close the connection without writing a response."""
        return cls("drop")

    @classmethod
    def hang(cls, seconds: float | None = None) -> Step:
        """Never answer: wait for the client to give up (at most `seconds`, then drop)."""
        return cls("hang", seconds=seconds)

    @classmethod
    def garbage(cls) -> Step:
        """A 200 whose body is truncated JSON or not JSON at all."""
        return cls("garbage")

    @classmethod
    def delay(cls, seconds: float) -> Step:
        """Answer normally after `seconds` (instead of the configured latency)."""
        return cls("delay", seconds=seconds)

    @classmethod
    def finish(cls, reason: str) -> Step:
        """Answer with this finish_reason ("content_filter": content null; "error": partial)."""
        return cls("finish", reason=reason)

    @classmethod
    def body(cls, raw: bytes | str, status: int = 200, headers: dict[str, str] | None = None) -> Step:
        """Send exactly these bytes with this status (content type JSON unless overridden)."""
        data = raw.encode() if isinstance(raw, str) else raw
        return cls("body", status, payload=data, headers=tuple((headers or {}).items()))

    @classmethod
    def huge(cls, nbytes: int) -> Step:
        """A valid 200 answer padded with trailing spaces in its content to `nbytes` bytes."""
        return cls("huge", size=nbytes)

    @classmethod
    def trickle(cls, interval_s: float = 0.5) -> Step:
        """Send 200 headers, then one body byte every `interval_s`, forever."""
        return cls("trickle", seconds=interval_s)


# Steps that answer normally, so they meet the limits; every other step is a fault that bypasses them.
ANSWERING = frozenset({"ok", "delay", "finish"})


class _Rule:
    __slots__ = ("contains", "steps", "left", "used")

    def __init__(self, contains: str, steps: tuple[Step, ...], times: int | None) -> None:
        self.contains, self.steps, self.left, self.used = contains, steps, times, 0


class Script:
    """The steps queued by a test: rules matched on the last user text first, then a FIFO."""

    def __init__(self) -> None:
        self._queue: deque[Step] = deque()
        self._rules: list[_Rule] = []

    def __bool__(self) -> bool:
        return bool(self._queue or self._rules)

    def add(self, *steps: Step) -> None:
        """Queue steps for the next valid chat requests, in arrival order."""
        self._queue.extend(steps)

    def rule(self, contains: str, *steps: Step, times: int | None = None) -> None:
        """Steps for requests whose last user text contains `contains` (last step repeats)."""
        if not steps:
            raise ValueError("a rule needs at least one step")
        self._rules.append(_Rule(contains, steps, times))

    def pick(self, text: str) -> Step | None:
        """The step for a request with this last user text, or None to answer as configured."""
        for rule in self._rules:
            if rule.left != 0 and rule.contains in text:
                step = rule.steps[min(rule.used, len(rule.steps) - 1)]
                rule.used += 1
                if rule.left is not None:
                    rule.left -= 1
                return step
        return self._queue.popleft() if self._queue else None
