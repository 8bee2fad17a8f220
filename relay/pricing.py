"""What a relay request costs: billable tokens by the market's weights, then the price per 1M.

The worst case, held before dispatch, rounds every step up; the actual cost rounds down (the
buyer is never charged in the exchange's favour). Input is estimated without a tokenizer: the
hold counts two characters a token (twice the usual four, a margin for code and non-English
text), and a missing `usage` is estimated at four (relay.tokens).
"""

from dataclasses import dataclass

from core.units import billable_tokens, bp_ceil, cost_floor_micro
from relay.tokens import prompt_text

WORST_CASE_CHARS_PER_TOKEN = 2


@dataclass(frozen=True)
class Weights:
    output_weight_bp: int
    cache_weight_bp: int


@dataclass(frozen=True)
class Tokens:
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0

    def billable(self, weights: Weights) -> int:
        """Billable tokens, weighted parts rounded down (the cost side)."""
        return billable_tokens(
            input_tokens=self.input_tokens,
            cached_input_tokens=self.cached_input_tokens,
            output_tokens=self.output_tokens,
            output_weight_bp=weights.output_weight_bp,
            cache_weight_bp=weights.cache_weight_bp,
        )

    @property
    def total(self) -> int:
        return self.input_tokens + self.cached_input_tokens + self.output_tokens


def worst_input_tokens(body: dict) -> int:
    text, framing = prompt_text(body)
    return -(-len(text) // WORST_CASE_CHARS_PER_TOKEN) + framing


def worst_billable_tokens(*, input_tokens: int, max_output_tokens: int, weights: Weights) -> int:
    """Billable tokens of the worst case: all input uncached, all output used, rounded up."""
    return input_tokens + bp_ceil(max_output_tokens, weights.output_weight_bp)


def cost_micro(*, tokens: Tokens, weights: Weights, price_micro_per_m: int) -> int:
    return cost_floor_micro(tokens=tokens.billable(weights), price_micro_per_m=price_micro_per_m)
