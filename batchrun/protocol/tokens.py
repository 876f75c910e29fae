"""Token estimates: a cheap, deterministic, slightly generous count used for TPM budgeting and
plans, and its calibration from the provider's reported usage."""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping
from typing import Any

# OpenAI counts ~4 bytes of English per token; every message costs a few tokens of framing.
BYTES_PER_TOKEN = 4
MESSAGE_OVERHEAD = 4
REPLY_PRIMING = 3
IMAGE_TOKENS = 765  # a "high" detail 512x512 tile set, as OpenAI prices it


def count_text_tokens(text: str) -> int:
    """Tokens in one piece of text (at least 1 for non-empty text)."""
    if not text:
        return 0
    if text.isascii():
        return (len(text) + BYTES_PER_TOKEN - 1) // BYTES_PER_TOKEN
    # Tokenizers spend far more on non-Latin scripts than 4 bytes a token: a CJK character (3
    # bytes) is about one token. Counting its bytes at 3 a token keeps budgets and TPM pacing on
    # the safe side for every script (Cyrillic and Greek are over-counted, never under-counted).
    ascii_chars = len(text.encode("ascii", "ignore"))
    other_bytes = len(text.encode("utf-8", "surrogatepass")) - ascii_chars
    return -(-(3 * ascii_chars + BYTES_PER_TOKEN * other_bytes) // (3 * BYTES_PER_TOKEN))


def _content_tokens(content: Any) -> int:
    if content is None:
        return 0
    if isinstance(content, str):
        return count_text_tokens(content)
    total = 0
    if isinstance(content, list):
        for part in content:
            if isinstance(part, Mapping):
                if part.get("type") == "image_url":
                    total += IMAGE_TOKENS
                else:
                    total += count_text_tokens(str(part.get("text", "")))
            else:
                total += count_text_tokens(str(part))
        return total
    return count_text_tokens(str(content))


def count_prompt_tokens(messages: Iterable[Mapping[str, Any]]) -> int:
    """Prompt tokens of a chat: content plus per-message framing, as the simulator bills them."""
    total = REPLY_PRIMING
    for message in messages:
        total += MESSAGE_OVERHEAD + _content_tokens(message.get("content"))
        if message.get("tool_calls"):
            total += count_text_tokens(str(message["tool_calls"]))
    return total


# --- calibration from the provider's own count --------------------------------------------

CALIBRATION_META = "token_ratio"  # the journal's meta key for what `Calibration.learned()` keeps
RATIO_BOUNDS = (0.25, 4.0)  # no tokenizer is further from 4 bytes a token; a ratio outside is a bug
RECENT = 25  # the calibration is the median ratio of this many latest answers
REFRESH = 8  # once that many are in, the median is taken every REFRESH answers: sorting costs


class _Ratio:
    """One model's latest ratios of the provider's prompt tokens to our estimate."""

    __slots__ = ("recent", "value", "answers", "_fresh")

    def __init__(self, value: float) -> None:
        self.recent: deque[float] = deque(maxlen=RECENT)
        self.value = value
        self.answers = 0
        self._fresh = 0  # ratios added since the median was last taken

    def add(self, ratio: float) -> None:
        self.recent.append(min(max(ratio, RATIO_BOUNDS[0]), RATIO_BOUNDS[1]))
        self.answers += 1
        self._fresh += 1
        # The median shrugs off outliers (a cached prompt, an odd row); it settles in a handful
        # of answers because it is taken at each of the first RECENT.
        if self.answers <= RECENT or self._fresh >= REFRESH:
            ordered = sorted(self.recent)
            mid = len(ordered) // 2
            self.value = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
            self._fresh = 0


class Calibration:
    """How a provider counts prompt tokens against our estimate, per model, from its answers.

    Our estimate (4 bytes a token) is not the provider's tokenizer (Llama, Gemma, Claude, other
    scripts). Each answer's `usage.prompt_tokens` over our estimate for the same request is one
    ratio; the calibration is their recent median, bounded to RATIO_BOUNDS. Before any answer
    it is what an earlier run on the same output learned (`learned`), else 1.
    """

    def __init__(self, learned: Mapping[str, Any] | None = None) -> None:
        # What an earlier run kept (`learned()`, from the journal): read with care, it is a file.
        self._learned: dict[str, dict[str, float | int]] = {}
        for model, entry in (learned or {}).items():
            ratio = entry.get("ratio") if isinstance(entry, Mapping) else None
            answers = entry.get("answers") if isinstance(entry, Mapping) else None
            if isinstance(ratio, int | float) and math.isfinite(ratio) and ratio > 0:
                self._learned[str(model)] = {
                    "ratio": min(max(float(ratio), RATIO_BOUNDS[0]), RATIO_BOUNDS[1]),
                    "answers": answers if isinstance(answers, int) and answers > 0 else 0,
                }
        self._models: dict[str, _Ratio] = {}

    def observe(self, model: str, estimate: int, reported: int | None) -> None:
        """One answer: our prompt estimate for its request and the provider's count (if any)."""
        if not reported or estimate <= 0:  # no usage, or nothing to compare
            return
        ratio = self._models.get(model)
        if ratio is None:
            ratio = self._models[model] = _Ratio(self.ratio(model))
        ratio.add(reported / estimate)

    def ratio(self, model: str) -> float:
        """Provider's prompt tokens per token of our estimate (1.0 when nothing is known)."""
        ratio = self._models.get(model)
        if ratio is not None:
            return ratio.value
        earlier = self._learned.get(model)
        return float(earlier["ratio"]) if earlier is not None else 1.0

    def estimate(self, model: str, prompt_estimate: int, completion_reserve: int) -> int:
        """A request's calibrated reservation: its prompt as the provider counts it, plus the
        completion it may use (what the TPM clock books and a budget holds)."""
        return math.ceil(prompt_estimate * self.ratio(model)) + completion_reserve

    def answers(self, model: str) -> tuple[int, bool]:
        """How many answers the ratio of `model` comes from, and whether they are this run's
        (else an earlier run's on the same output)."""
        ratio = self._models.get(model)
        if ratio is not None:
            return ratio.answers, True
        earlier = self._learned.get(model)
        return (int(earlier["answers"]) if earlier is not None else 0), False

    def learned(self) -> dict[str, dict[str, float | int]]:
        """What to keep for a later run or `plan`: each model's ratio and how many answers it
        comes from (an earlier run's entry stays for a model this run had no answer from)."""
        kept = dict(self._learned)
        for model, r in self._models.items():
            kept[model] = {"ratio": round(r.value, 4), "answers": r.answers}
        return kept
