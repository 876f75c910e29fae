"""Token estimates: deterministic, generous enough for non-Latin scripts, cheap for ASCII."""

from __future__ import annotations

import pytest

from batchrun.protocol.tokens import RATIO_BOUNDS, RECENT, Calibration, count_prompt_tokens, count_text_tokens


def test_ascii_counts_four_bytes_a_token() -> None:
    assert count_text_tokens("") == 0
    assert count_text_tokens("abcd") == 1
    assert count_text_tokens("abcde") == 2
    assert count_text_tokens("x" * 400) == 100


def test_cjk_counts_at_least_one_token_a_character() -> None:
    text = "日本語のテキストです" * 7
    assert count_text_tokens(text) >= len(text)


def test_mixed_scripts_never_count_less_than_bytes_over_four() -> None:
    for text in ("Привет, как дела?", "emoji 😀😀 and text", "مرحبا بالعالم", "naïve café"):
        assert count_text_tokens(text) >= -(-len(text.encode()) // 4)


def test_prompt_counts_framing_and_images() -> None:
    plain = count_prompt_tokens([{"role": "user", "content": "abcd"}])
    assert plain == 3 + 4 + 1
    with_image = count_prompt_tokens([{"role": "user", "content": [
        {"type": "text", "text": "abcd"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    ]}])
    assert with_image == plain + 765


# --- calibration -------------------------------------------------------------------------------


def test_calibration_starts_at_one_and_settles_on_the_providers_count_in_a_few_answers() -> None:
    cal = Calibration()
    assert cal.ratio("m") == 1.0 and cal.estimate("m", 100, 40) == 140
    for estimate in (100, 80, 120):  # a tokenizer counting 0.6x of our estimate
        cal.observe("m", estimate, round(estimate * 0.6))
    assert cal.ratio("m") == pytest.approx(0.6, abs=0.01)
    assert cal.estimate("m", 100, 40) == 60 + 40  # the completion reserve is not scaled
    assert cal.ratio("other") == 1.0  # per model
    assert cal.answers("m") == (3, True)


def test_calibration_shrugs_off_outliers() -> None:
    cal = Calibration()
    for i in range(40):
        reported = 5 if i % 10 == 3 else 200  # a cached or odd prompt now and then
        cal.observe("m", 100, reported)
    assert cal.ratio("m") == pytest.approx(2.0)


def test_calibration_follows_a_change_within_the_recent_answers() -> None:
    cal = Calibration()
    for _ in range(100):
        cal.observe("m", 100, 50)
    for _ in range(RECENT):
        cal.observe("m", 100, 200)
    assert cal.ratio("m") == pytest.approx(2.0)


def test_calibration_is_bounded_and_ignores_answers_without_usage() -> None:
    cal = Calibration()
    cal.observe("m", 100, None)
    cal.observe("m", 100, 0)
    cal.observe("m", 0, 50)
    assert cal.ratio("m") == 1.0 and cal.answers("m") == (0, False)
    for _ in range(5):
        cal.observe("m", 10, 10_000)
    assert cal.ratio("m") == RATIO_BOUNDS[1]
    for _ in range(5):
        cal.observe("low", 10_000, 1)
    assert cal.ratio("low") == RATIO_BOUNDS[0]


def test_calibration_starts_from_what_an_earlier_run_learned_and_keeps_it() -> None:
    first = Calibration()
    for _ in range(7):
        first.observe("m", 100, 50)
    kept = first.learned()
    assert kept == {"m": {"ratio": 0.5, "answers": 7}}
    second = Calibration(kept)
    assert second.ratio("m") == 0.5 and second.answers("m") == (7, False)
    assert second.learned() == kept  # a run with no answer keeps the earlier entry
    second.observe("m", 100, 100)
    assert second.ratio("m") == 1.0 and second.answers("m") == (1, True)
    # A journal written by hand or by an older version: bad entries are ignored, ratios bounded.
    odd = Calibration({"a": {"ratio": "x"}, "b": 3, "c": {"ratio": 50.0, "answers": -1},
                       "d": {"ratio": float("nan")}})
    assert (odd.ratio("a"), odd.ratio("b"), odd.ratio("c"), odd.ratio("d")) == (1.0, 1.0, 4.0, 1.0)
