"""The evidence test for 429s: do recent 429s show that the run is too fast, or are they strays?

Busy providers and gateways answer 1-2% of requests with 429 at any pace; such a stray 429 must
delay only its own row: pausing every start and cutting the pace for each would spiral the run
down to a crawl. The evidence is (1) 429s that are more than noise among the recent answers,
judged by a running score over answers, not over time (Page's CUSUM test: a pause, when few
answers come back, neither makes one 429 look like a storm nor forgets a real one), and still so
if every request in flight answers ok (429s come back before the answers of requests sent with
them); (2) the 429's headers saying the window is spent; (3) a 429 while the pace probes above a
rate that 429s taught before (the limiter asks its paces about that one).
"""

from __future__ import annotations

import math

from batchrun.sending.limits.pace import RECOVER_EVERY

# The score (CUSUM): each answer moves it by the log-likelihood ratio of "429s are STORM of the
# answers" against "they are NOISE", floored at 0; ALARM is the evidence. From nothing, four
# 429s in a row reach it. With 2% stray 429s a run of 3,000 answers crosses it by chance about
# once in a hundred runs (1%: never seen in 2,000 simulated runs).
NOISE = 0.02  # the share of 429s a provider makes at any pace
STORM = 0.25  # a share of 429s that says the run is too fast
LIMITED_WEIGHT = math.log(STORM / NOISE)  # +2.53 for a 429
ANSWER_WEIGHT = math.log((1 - STORM) / (1 - NOISE))  # -0.27 for any other answer
ALARM = 10.0
# Answers come back in bunches (workers in step, 429s faster than answers): the score is floored
# only between slices of this long, so a bunch's successes and its stray 429s weigh together.
SLICE = 0.05
SETTLE = 1.0  # seconds after a cut when another is only a touch (the server's window drains)


class Evidence:
    """The running score of 429s among answers, the last cut, and what the headers said."""

    def __init__(self) -> None:
        self._floor = 0.0  # the score as of the last slice
        self._slice = 0.0  # the sum of the answers of the slice under way
        self._slice_end = -math.inf
        self.last_cut = -math.inf
        self.spent = False  # did the latest answer's headers say the window is spent?

    def answer(self, now: float) -> None:
        """Count an answer of any kind (a 429 is then weighed again by `limited`)."""
        if now >= self._slice_end:
            self._floor = max(0.0, self._floor + self._slice)
            self._slice, self._slice_end = 0.0, now + SLICE
        self._slice += ANSWER_WEIGHT
        self.spent = False

    def limited(self, sent_at: float | None, now: float) -> bool:
        """The answer just counted was a 429 about rate: weigh it as one. Returns whether it
        is fresh: only a 429 for a request started after the last cut is evidence, as the ones
        in flight at the time of a cut describe the old pace, which is already cut."""
        if sent_at is not None:
            fresh = sent_at >= self.last_cut
        else:  # no start time to judge by: one cut per burst of 429s
            fresh = now - self.last_cut >= RECOVER_EVERY
        # `answer` counted it as one more that was not a 429: count it again.
        self._slice += (LIMITED_WEIGHT if fresh else 0.0) - ANSWER_WEIGHT
        return fresh

    def storm(self, in_flight: int) -> bool:
        """Are the 429s more than noise, even if every request in flight answers ok?

        A 429 comes back at once while answers take their latency, so the first answers of a
        run (or of a burst) are its 429s. Four stray 429s among the first 64 requests are not a
        storm; in a real one the requests in flight come back 429 too and the score still gets
        there."""
        return self._floor + self._slice + in_flight * ANSWER_WEIGHT >= ALARM

    def cut(self, now: float) -> bool:
        """The pace is cut now: new evidence must build afresh. Returns whether the cut comes
        soon after the last one, while the server's window still holds the pace before it: its
        429s then say the cut was not quite enough, not that the run is far too fast."""
        again = now - self.last_cut < SETTLE
        self.last_cut = now
        self._floor = self._slice = 0.0
        return again
