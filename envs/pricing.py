"""List prices of common LLMs and the model pools a router chooses from.

Prices are USD per one million tokens, as published on the providers' pricing pages on
the date in :data:`PRICES_AS_OF`. A pool is an ordered tuple of :class:`ModelPrice`,
cheapest first: action ``0`` always selects the cheapest model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

PRICES_AS_OF = "2025-06-01"
"""Date at which the list prices in :data:`PRICE_TABLE` were read."""

PRICE_SOURCES = {
    "openai": "https://openai.com/api/pricing",
    "anthropic": "https://www.anthropic.com/pricing",
    "google": "https://ai.google.dev/gemini-api/docs/pricing",
    "mistral": "https://mistral.ai/pricing",
}
"""Where the list prices of each provider were read."""


@dataclass(frozen=True)
class ModelPrice:
    """A model's name and its list price in USD per 1M input and output tokens."""

    name: str
    input_usd_per_mtok: float
    output_usd_per_mtok: float

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"model name must be a non-empty string, got {self.name!r}")
        for field in ("input_usd_per_mtok", "output_usd_per_mtok"):
            value = getattr(self, field)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(
                    f"{field} of model {self.name!r} must be a number, got {value!r}"
                )
            if not math.isfinite(value) or value < 0:
                raise ValueError(
                    f"{field} of model {self.name!r} must be finite and >= 0, got {value!r}"
                )

    def call_cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        """Return the cost in USD of one call with the given token counts."""
        return (
            prompt_tokens * self.input_usd_per_mtok
            + completion_tokens * self.output_usd_per_mtok
        ) / 1e6


PRICE_TABLE: dict[str, ModelPrice] = {
    p.name: p
    for p in (
        # OpenAI
        ModelPrice("gpt-4.1-nano", 0.10, 0.40),
        ModelPrice("gpt-4.1-mini", 0.40, 1.60),
        ModelPrice("gpt-4.1", 2.00, 8.00),
        ModelPrice("gpt-4o-mini", 0.15, 0.60),
        ModelPrice("gpt-4o", 2.50, 10.00),
        ModelPrice("o4-mini", 1.10, 4.40),
        ModelPrice("o3", 2.00, 8.00),
        # Anthropic
        ModelPrice("claude-3.5-haiku", 0.80, 4.00),
        ModelPrice("claude-sonnet-4", 3.00, 15.00),
        ModelPrice("claude-opus-4", 15.00, 75.00),
        # Google
        ModelPrice("gemini-2.5-flash", 0.30, 2.50),
        ModelPrice("gemini-2.5-pro", 1.25, 10.00),
        # Models of the recorded outcome tables (prices when the answers were made)
        ModelPrice("mixtral-8x7b-instruct", 0.60, 0.60),
        ModelPrice("gpt-4-1106-preview", 10.00, 30.00),
    )
}
"""Dated list prices (see :data:`PRICES_AS_OF` and :data:`PRICE_SOURCES`)."""

DEFAULT_POOL = ("gpt-4.1-mini", "gpt-4.1")
"""The cheap / expensive pair used by default: GPT-4.1-mini and GPT-4.1."""

MIN_MODELS, MAX_MODELS = 2, 4


def make_pool(
    models: Sequence[str | ModelPrice | Mapping] | None = None,
) -> tuple[ModelPrice, ...]:
    """Return a validated pool of 2 to 4 models, cheapest first.

    Each entry is a name from :data:`PRICE_TABLE`, a :class:`ModelPrice`, or a mapping
    with keys ``name``, ``input_usd_per_mtok`` and ``output_usd_per_mtok`` for custom
    prices. The pool must be ordered by price: each model's input and output prices are
    at least those of the model before it.
    """
    if models is None:
        models = DEFAULT_POOL
    if isinstance(models, (str, bytes)) or not isinstance(models, Sequence):
        raise TypeError(f"models must be a sequence of models, got {models!r}")
    pool = []
    for i, entry in enumerate(models):
        if isinstance(entry, ModelPrice):
            pool.append(entry)
        elif isinstance(entry, str):
            if entry not in PRICE_TABLE:
                known = ", ".join(sorted(PRICE_TABLE))
                raise ValueError(f"models[{i}]: unknown model {entry!r}; known: {known}")
            pool.append(PRICE_TABLE[entry])
        elif isinstance(entry, Mapping):
            fields = {"name", "input_usd_per_mtok", "output_usd_per_mtok"}
            missing, extra = fields - set(entry), set(entry) - fields
            if missing:
                raise ValueError(
                    f"models[{i}]: price entry misses field(s) {sorted(missing)}: "
                    f"{dict(entry)!r}"
                )
            if extra:
                raise ValueError(
                    f"models[{i}]: price entry has unknown field(s) {sorted(extra)}; "
                    f"known: {sorted(fields)}"
                )
            pool.append(
                ModelPrice(
                    entry["name"],
                    entry["input_usd_per_mtok"],
                    entry["output_usd_per_mtok"],
                )
            )
        else:
            raise TypeError(f"models[{i}] must be a name, ModelPrice or mapping")
    if not MIN_MODELS <= len(pool) <= MAX_MODELS:
        raise ValueError(
            f"models: a pool holds {MIN_MODELS} to {MAX_MODELS} models, got {len(pool)}"
        )
    names = [p.name for p in pool]
    if len(set(names)) != len(names):
        raise ValueError(f"models: duplicate model names in {names}")
    for a, b in zip(pool[:-1], pool[1:], strict=True):
        if (
            b.input_usd_per_mtok < a.input_usd_per_mtok
            or b.output_usd_per_mtok < a.output_usd_per_mtok
        ):
            raise ValueError(
                f"models: pool must be ordered cheapest first, but {b.name!r} is "
                f"cheaper than {a.name!r} before it"
            )
    return tuple(pool)
