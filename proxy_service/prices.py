"""What a call costs: the price table per model and the arithmetic on a call's token counts.

Shipped prices are Google's list prices for the Gemini Developer API's paid tier ("Standard"), USD per 1M tokens,
as published at https://ai.google.dev/gemini-api/docs/pricing; the 2.5 figures were cross-checked against
third-party summaries of that page dated January-March 2026 (e.g. deploybase.ai: 2.5 Pro $1.25 / $10 up to 200k
prompt tokens, $2.50 / $15 above; 2.5 Flash $0.30 / $2.50), the page itself was not re-read for this table: an
operator billing on these figures should check them there and edit `prices`. Text, image and video input
share one price; audio input costs more on the flash models, but Keyrack's events do not split the prompt by
modality, so audio is priced as text (an estimate, not a bill). Thinking tokens are billed as output tokens. The
operator edits the table (`prices` setting); a model absent from it costs nothing (NULL cost in its events).

Gemini's usage: `promptTokenCount` includes the cached tokens (`cachedContentTokenCount`), `candidatesTokenCount`
excludes the thinking tokens (`thoughtsTokenCount`). The OpenAI surface reports no thinking count, so what
`total_tokens` holds beyond prompt + completion is taken as thinking there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

MTOK = 1_000_000
LONG_PROMPT_ABOVE = 200_000  # Gemini's long-context tier starts past this many prompt tokens
MAX_PRICE = 1_000.0  # USD per 1M tokens: a hundred times any list price, so a typo (10000 for 1.0) is refused
MAX_MODELS = 500


class Price(BaseModel):
    """A model's prices in USD per 1M tokens; the `*_long_*` prices apply past `long_prompt_above` prompt tokens
    (unset: the same as the short ones)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    input_per_mtok: float = Field(ge=0, le=MAX_PRICE)
    output_per_mtok: float = Field(ge=0, le=MAX_PRICE)
    cached_input_per_mtok: float | None = Field(None, ge=0, le=MAX_PRICE)
    thinking_per_mtok: float | None = Field(None, ge=0, le=MAX_PRICE)
    input_long_per_mtok: float | None = Field(None, ge=0, le=MAX_PRICE)
    output_long_per_mtok: float | None = Field(None, ge=0, le=MAX_PRICE)
    cached_input_long_per_mtok: float | None = Field(None, ge=0, le=MAX_PRICE)
    thinking_long_per_mtok: float | None = Field(None, ge=0, le=MAX_PRICE)
    long_prompt_above: int = Field(LONG_PROMPT_ABOVE, ge=1, le=100_000_000)

    def rates(self, prompt: int) -> tuple[float, float, float, float]:
        """(input, output, cached input, thinking) per token for a call with `prompt` prompt tokens."""
        inp, out = self.input_per_mtok, self.output_per_mtok
        cached = self.cached_input_per_mtok if self.cached_input_per_mtok is not None else inp
        thinking = self.thinking_per_mtok if self.thinking_per_mtok is not None else out
        if prompt > self.long_prompt_above:
            inp = _or(self.input_long_per_mtok, inp)
            out = _or(self.output_long_per_mtok, out)
            cached = _or(self.cached_input_long_per_mtok, cached)
            thinking = _or(self.thinking_long_per_mtok, _or(self.output_long_per_mtok, thinking))
        return inp / MTOK, out / MTOK, cached / MTOK, thinking / MTOK


def _or(v: float | None, default: float) -> float:
    return default if v is None else v


def _p(inp: float, out: float, cached: float, long: tuple[float, float, float] | None = None) -> dict[str, float]:
    row = {"input_per_mtok": inp, "output_per_mtok": out, "cached_input_per_mtok": cached, "thinking_per_mtok": out}
    if long is not None:
        row |= {
            "input_long_per_mtok": long[0],
            "output_long_per_mtok": long[1],
            "cached_input_long_per_mtok": long[2],
            "thinking_long_per_mtok": long[1],
        }
    return row


# The shipped table (see the module docstring for the source). Embedding models price input only.
DEFAULT_PRICES: dict[str, dict[str, float]] = {
    "gemini-3-pro-preview": _p(2.00, 12.00, 0.20, (4.00, 18.00, 0.40)),
    "gemini-2.5-pro": _p(1.25, 10.00, 0.125, (2.50, 15.00, 0.25)),
    "gemini-2.5-flash": _p(0.30, 2.50, 0.03),
    "gemini-2.5-flash-lite": _p(0.10, 0.40, 0.01),
    "gemini-2.0-flash": _p(0.10, 0.40, 0.025),
    "gemini-2.0-flash-lite": _p(0.075, 0.30, 0.075),
    "gemini-embedding-001": _p(0.15, 0.0, 0.15),
}


def default_prices() -> dict[str, Price]:
    return {model: Price.model_validate(row) for model, row in DEFAULT_PRICES.items()}


class PriceBook:
    """A price table ready for lookups: exact model id first, else the longest listed id the name starts with
    followed by "-" (gemini-2.5-flash-preview-09-2025 → gemini-2.5-flash), else None. Lookups are cached."""

    def __init__(self, table: dict[str, Price]) -> None:
        self.table = table
        self._by_length = sorted(table, key=len, reverse=True)
        self._found: dict[str, Price | None] = {}

    def price(self, model: str | None) -> Price | None:
        if not model:
            return None
        try:
            return self._found[model]
        except KeyError:
            pass
        found = self.table.get(model)
        if found is None:
            found = next((self.table[m] for m in self._by_length if model.startswith(m + "-")), None)
        if len(self._found) < 1_000:  # model names come from clients: the cache stays bounded
            self._found[model] = found
        return found

    def cost(
        self,
        model: str | None,
        prompt: int | None,
        output: int | None,
        thinking: int | None,
        cached: int | None,
        total: int | None = None,
    ) -> float | None:
        """The list price in USD of a call with these token counts, or None (unpriced model, no usage)."""
        price = self.price(model)
        if price is None or (prompt is None and output is None and total is None):
            return None
        p, o, c = prompt or 0, output or 0, min(cached or 0, prompt or 0)
        t = thinking if thinking is not None else max(0, (total or 0) - p - o)
        r_in, r_out, r_cached, r_think = price.rates(p)
        return (p - c) * r_in + c * r_cached + o * r_out + t * r_think
