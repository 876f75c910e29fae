"""The selection's compact key set counts earlier rows exactly as a Counter of every key would."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from batchrun.running.seen import Seen


def test_each_row_counts_the_rows_before_it_even_when_prefixes_collide() -> None:
    rng = random.Random(7)
    pool = [rng.randbytes(16) for _ in range(2_000)]
    # Keys sharing their first 8 bytes: the set searches by those, so it must look further.
    pool += [pool[0][:8] + rng.randbytes(8) for _ in range(6)]
    seen, counts = Seen(), Counter[bytes]()
    for _ in range(150):
        batch = [rng.choice(pool) for _ in range(rng.randint(0, 400))]
        expected = []
        for key in batch:
            expected.append(counts[key])
            counts[key] += 1
        assert seen.place(batch) == expected
    assert len(seen) == len(counts)  # each distinct key is kept once


def test_a_key_that_is_not_16_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="16 bytes"):
        Seen().place([b"short"])
