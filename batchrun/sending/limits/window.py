"""The window of recent starts: what the run really sent over the last seconds, and what of it
the server refused. A cut of the pace is measured against it (the "wall")."""

from __future__ import annotations

from collections import deque

MEASURE_SPAN = 2.0  # seconds of starts that say how fast the run really goes


class RecentStarts:
    """The starts (time, tokens) of the last MEASURE_SPAN seconds, and their 429s."""

    def __init__(self) -> None:
        self._sent: deque[tuple[float, int]] = deque()
        self._refused: deque[float] = deque()  # starts of recent requests refused with 429
        self.latest = 0  # the tokens of the latest start: what "room left" must hold

    def add(self, at: float, tokens: int) -> None:
        """A request of `tokens` started at `at`."""
        self._sent.append((at, tokens))
        self.latest = tokens

    def refused(self, at: float) -> None:
        """The request started at `at` was answered 429."""
        self._refused.append(at)

    def tokens(self) -> list[int]:
        """The tokens of each recent start, oldest first."""
        return [t for _, t in self._sent]

    def __len__(self) -> int:
        return len(self._sent)

    def rescale(self, factor: float) -> float:
        """Token estimates changed by `factor`: measure the recent starts at the new one;
        returns the tokens they now hold beyond what they were booked at."""
        sent = self._sent
        extra = sum(t for _, t in sent) * (factor - 1)
        self._sent = deque((at, round(t * factor)) for at, t in sent)
        return extra

    def measured(self, now: float) -> tuple[float | None, float | None]:
        """Requests and tokens per minute the server took (started, less those refused with a
        429) over the last MEASURE_SPAN seconds."""
        self.forget(now)
        sent = self._sent
        if len(sent) < 2:
            return None, None
        # The starts before the last one filled the time from the first start until now.
        span = max(now - sent[0][0], 1e-3)
        refused = sum(1 for at in self._refused if at >= sent[0][0])
        started = len(sent) - 1
        took = max(started - refused, 1) / started
        tokens = (sum(t for _, t in sent) - sent[-1][1]) * took
        return started * took * 60.0 / span, tokens * 60.0 / span

    def forget(self, now: float) -> None:
        """Drop the starts and refusals older than MEASURE_SPAN."""
        edge = now - MEASURE_SPAN
        sent, refused = self._sent, self._refused
        while sent and sent[0][0] < edge:
            sent.popleft()
        while refused and refused[0] < edge:
            refused.popleft()
