"""Budgets for unattended runs: --max-cost and --max-total-tokens, counting what is in flight."""

from __future__ import annotations


class Budget:
    """Admit a request only if, with what is in flight, it fits; then settle it at what it used."""

    def __init__(self, max_cost: float | None, max_tokens: int | None) -> None:
        self.max_cost = max_cost
        self.max_tokens = max_tokens
        self.spent_cost = 0.0
        self.spent_tokens = 0
        self.held_cost = 0.0
        self.held_tokens = 0
        self.active = max_cost is not None or max_tokens is not None  # else nothing to hold

    def admit(self, tokens: int, cost: float) -> str | None:
        """Hold a request's worst case, or say why the budget cannot take it."""
        if self.max_cost is not None and (
            self.spent_cost + self.held_cost + cost > self.max_cost
        ):
            return (
                f"budget reached: --max-cost {self.max_cost:g} USD (spent {self.spent_cost:.4f}, "
                f"{self.held_cost:.4f} in flight); raise it or run again to continue"
            )
        if self.max_tokens is not None and (
            self.spent_tokens + self.held_tokens + tokens > self.max_tokens
        ):
            return (
                f"budget reached: --max-total-tokens {self.max_tokens} (used {self.spent_tokens}, "
                f"{self.held_tokens} in flight); raise it or run again to continue"
            )
        self.held_cost += cost
        self.held_tokens += tokens
        return None

    def settle(self, held_tokens: int, held_cost: float, tokens: int, cost: float) -> None:
        """Replace a hold by what the request really used."""
        self.held_cost -= held_cost
        self.held_tokens -= held_tokens
        self.spent_cost += cost
        self.spent_tokens += tokens
