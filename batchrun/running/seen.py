"""Seen: the base hashes of the rows a selection has placed so far, in a compact set.

Dedup and occurrence keys ask, for each row, how many rows before it rendered the same request.
A Python set of a million 16-byte keys costs ~100 MB; here each distinct key costs 16 bytes in
sorted numpy arrays (runs merged as they double, so a lookup searches a few of them), and only
keys seen more than once are counted in a dict. Lookups and inserts go a batch at a time.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

KEY_BYTES = 16  # the renderer's keys: blake2b digests of 16 bytes


class Seen:
    """The distinct base hashes placed so far, and how often each repeated one came."""

    def __init__(self) -> None:
        # Runs of distinct keys, each sorted by its first 8 bytes: (first 8 bytes, last 8 bytes).
        self._runs: list[tuple[np.ndarray, np.ndarray]] = []
        self._repeats: dict[bytes, int] = {}  # keys placed more than once: how many times

    def __len__(self) -> int:
        return sum(len(high) for high, _ in self._runs)

    def place(self, bases: Sequence[bytes]) -> list[int]:
        """Place a batch of rows by their base hashes; for each, how many rows placed before it
        (in earlier batches, or earlier in this one) had the same."""
        n = len(bases)
        if not n:
            return []
        joined = b"".join(bases)
        if len(joined) != KEY_BYTES * n:
            raise ValueError(f"keys must be {KEY_BYTES} bytes")
        keys = np.frombuffer(joined, dtype=">u8")
        high, low = keys[0::2].astype(np.uint64), keys[1::2].astype(np.uint64)
        order = np.lexsort((low, high))  # equal keys side by side, in row order
        high, low = high[order], low[order]
        first = np.ones(n, dtype=bool)  # the first row of each distinct key
        first[1:] = (high[1:] != high[:-1]) | (low[1:] != low[:-1])
        starts = np.flatnonzero(first)
        group = np.cumsum(first) - 1
        sizes = np.diff(np.append(starts, n))
        known = self._known(high[starts], low[starts])  # sorted lookups walk the runs in order
        earlier = np.zeros(len(starts), dtype=np.int64)  # rows of the key in earlier batches
        for g in np.flatnonzero(known).tolist():
            earlier[g] = self._repeats.get(bases[order[starts[g]]], 1)
        for g in np.flatnonzero(known | (sizes > 1)).tolist():
            self._repeats[bases[order[starts[g]]]] = int(earlier[g] + sizes[g])
        if not known.all():
            fresh = starts[~known]
            self._runs.append((high[fresh], low[fresh]))  # sorted already
            self._merge()
        counts = np.empty(n, dtype=np.int64)
        counts[order] = np.arange(n) - starts[group] + earlier[group]
        return list(counts.tolist())

    def _known(self, high: np.ndarray, low: np.ndarray) -> np.ndarray:
        """Which of the keys (sorted) a run holds."""
        known = np.zeros(len(high), dtype=bool)
        for run_high, run_low in self._runs:
            at = np.searchsorted(run_high, high)
            inside = np.flatnonzero(at < len(run_high))
            hit = inside[run_high[at[inside]] == high[inside]]
            known[hit] |= run_low[at[hit]] == low[hit]
            # An 8-byte prefix two keys share (1 in 2^64 a pair): look at every key with it.
            beyond = at[hit] + 1
            for i in hit[(beyond < len(run_high))
                         & (run_high[np.minimum(beyond, len(run_high) - 1)] == high[hit])]:
                end = np.searchsorted(run_high, high[i], "right")
                known[i] |= bool((run_low[at[i]:end] == low[i]).any())
        return known

    def _merge(self) -> None:
        """Merge the newest runs while the one before is not much larger: O(log n) runs."""
        runs = self._runs
        while len(runs) > 1 and len(runs[-2][0]) <= 2 * len(runs[-1][0]):
            (high_a, low_a), (high_b, low_b) = runs.pop(), runs.pop()
            high, low = np.concatenate((high_b, high_a)), np.concatenate((low_b, low_a))
            first = np.argsort(high, kind="stable")  # two sorted runs: merged in one pass
            runs.append((high[first], low[first]))
