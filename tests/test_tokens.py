"""Token estimates: deterministic, generous enough for non-Latin scripts, cheap for ASCII."""

from __future__ import annotations

from batchrun.tokens import count_prompt_tokens, count_text_tokens


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
