"""Provider presets: base URL, where the key lives, and each provider's quirks.

A preset's key comes from its own variable (`key_env`), `--api-key-env`, `--api-key-file` or
BATCHRUN_API_KEY; OPENAI_API_KEY only ever goes to OpenAI, or to a --base-url host that no preset
names (`settings.keys`).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Preset:
    """What batchrun knows about one provider."""

    name: str
    base_url: str
    key_env: str | None
    local: bool = False  # no key needed
    model_needs_org_prefix: bool = False  # LLMost: "openai/gpt-4o"
    model_optional: bool = False  # LLMost uses the account's default model when omitted
    default_model: str | None = None


PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset("openai", "https://api.openai.com/v1", "OPENAI_API_KEY"),
        Preset("megallm", "https://ai.megallm.io/v1", "MEGALLM_API_KEY"),
        Preset(
            "llmost",
            "https://llmost.ru/api/v1",
            "LLMOST_API_KEY",
            model_needs_org_prefix=True,
            model_optional=True,
        ),
        # OpenRouter names models like LLMost does ("anthropic/claude-3.5-sonnet"), no default.
        Preset("openrouter", "https://openrouter.ai/api/v1", "OPENROUTER_API_KEY",
               model_needs_org_prefix=True),
        # vLLM checks a key only when started with --api-key; llama.cpp's server speaks the same
        # API (point --base-url at its port, 8080 by default). Ollama ignores keys.
        Preset("vllm", "http://127.0.0.1:8000/v1", "VLLM_API_KEY", local=True),
        Preset("ollama", "http://127.0.0.1:11434/v1", None, local=True),
        # The simulator is started in-process on a free loopback port for the length of the run.
        Preset("simulator", "", None, local=True, default_model="sim-1"),
    )
}

DEFAULT_KEY_ENVS = ("BATCHRUN_API_KEY",)  # batchrun's own: for whatever endpoint the run names
# OpenAI's own variable: read for the openai preset and, as the OpenAI SDK would, for a base URL
# whose host no preset names; never for another provider's preset (its key would leak there).
FALLBACK_KEY_ENV = "OPENAI_API_KEY"
