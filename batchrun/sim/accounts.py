"""The keys the simulator accepts and what each one has: its limits, credits and prompt cache.

A request's `Authorization: Bearer KEY` picks its account. With no key configured (no
`api_key`, no `accounts`) every request is served by one keyless account, as before; with keys,
a request without one of them gets a 401. An account's limits count its own requests, on top of
the simulator's (which count everyone's). Its credits (USD) are checked when a request arrives:
a positive balance is served and the answer's cost is taken off afterwards (so the last answer
may take the balance below zero, as aggregators allow); at zero or below, a 402.
"""

from __future__ import annotations

from batchrun.sim.config import Account, SimConfig
from batchrun.sim.faults import error_body
from batchrun.sim.usage import PromptCache
from batchrun.sim.windows import Limits, LimitSpec

NO_CREDITS = ("Insufficient credits: this key's balance is used up. Add credits to continue "
              "or use another key.")


class AccountState:
    """One key at run time: its limits, balance, requests in flight and prompt cache."""

    def __init__(self, key: str, account: Account | None, config: SimConfig) -> None:
        self.key = key
        self.limits: Limits | None = None
        if account is not None and (account.rpm or account.tpm or account.max_concurrency):
            self.limits = Limits(LimitSpec(
                account.rpm, account.tpm, account.window_s or config.window_s,
                account.limit_shape or config.limit_shape, account.max_concurrency,
                config.rate_limit_headers, config.latency,
            ))
        self.credits = account.credits if account is not None else None
        self.in_flight = 0
        self.cache = PromptCache(config.tokenizer_ratio, config.cache_min_tokens)

    @property
    def balance(self) -> float | None:
        """USD left (None: unlimited); at or below zero every request gets a 402."""
        return self.credits

    def out_of_credits(self) -> bool:
        """True when this key can no longer be served."""
        return self.credits is not None and self.credits <= 0

    def spend(self, usd: float) -> None:
        """Take one answer's cost off the balance."""
        if self.credits is not None:
            self.credits -= usd


class Accounts:
    """Every key of one simulator, looked up by the request's Authorization header."""

    def __init__(self, config: SimConfig) -> None:
        self._style = config.error_style
        self._by_header: dict[str, AccountState] = {}
        for account in config.accounts:
            self._by_header[f"Bearer {account.key}"] = AccountState(account.key, account, config)
        if config.api_key is not None:
            self._by_header[f"Bearer {config.api_key}"] = AccountState(config.api_key, None, config)
        # No key configured: one keyless account serves everyone (its stats under "").
        self._open = AccountState("", None, config) if not self._by_header else None

    def find(self, authorization: str | None) -> AccountState | None:
        """The account of a request with this Authorization header (None: unauthorized)."""
        if self._open is not None:
            return self._open
        return self._by_header.get(authorization or "")

    def get(self, key: str) -> AccountState:
        """The account of `key` ("" for the keyless one); KeyError when there is none."""
        if self._open is not None and key == "":
            return self._open
        return self._by_header[f"Bearer {key}"]

    def refusal(self, authorization: str | None) -> bytes:
        """The 401 body for a request without an accepted key; never echoes a key, right or wrong,
        since it would end up in the client's logs."""
        if authorization is None:
            return error_body(
                self._style,
                401,
                "You didn't provide an API key. Provide it in an Authorization header using Bearer auth.",
                "invalid_request_error",
            )
        message = "Incorrect API key provided."
        return error_body(self._style, 401, message, "invalid_request_error", None, "invalid_api_key")

    def no_credits(self) -> bytes:
        """The 402 body of a used-up balance (OpenRouter's status, OpenAI's type and code)."""
        return error_body(self._style, 402, NO_CREDITS, "insufficient_quota", None, "insufficient_quota")
