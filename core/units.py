"""Money and token units, and every division the project does.

Money is an integer count of micro-USD (1 USD = 1,000,000). Decimal strings exist only at the edges:
`money_parse` reads "5.00" from a client, `money_format` writes "5.000000" back. Each division below
names its rounding rule, and callers book whatever remainder the rule leaves.
"""

from decimal import Decimal, InvalidOperation

MICRO_PER_USD = 1_000_000
MICRO_PER_CENT = 10_000
TOKENS_PER_PRICE_UNIT = 1_000_000  # prices are quoted per one million billable tokens
BP_PER_UNIT = 10_000  # basis points


class UnitError(ValueError):
    """A value at the edge is not a valid amount in the unit it claims."""


def money_parse(text: str, *, places: int = 6) -> int:
    """Parse a decimal USD string ("5", "5.5", "5.000000") into micro-USD, exactly.

    More decimal places than `places`, exponents, signs other than a leading '-', NaN and infinity
    are refused rather than rounded: a client must say exactly the amount it means.
    """
    if not isinstance(text, str):
        raise UnitError('amount must be a decimal string such as "50.00"')
    stripped = text.strip()
    if not stripped or any(ch not in "0123456789.-" for ch in stripped):
        raise UnitError('amount must be a decimal string such as "50.00"')
    try:
        value = Decimal(stripped)
    except InvalidOperation:
        raise UnitError('amount must be a decimal string such as "50.00"') from None
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int) or -exponent > places:
        raise UnitError(f"amount has more than {places} decimal places")
    return int(value * MICRO_PER_USD)


def money_format(micro: int) -> str:
    """Write micro-USD as a decimal string with six places: 5000000 -> "5.000000"."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    return f"{sign}{whole}.{frac:06d}"


def money_display(micro: int) -> str:
    """Write micro-USD for people: "$1,234.50", keeping sub-cent digits only when there are any."""
    sign = "-" if micro < 0 else ""
    whole, frac = divmod(abs(micro), MICRO_PER_USD)
    cents, sub_cent = divmod(frac, MICRO_PER_CENT)
    tail = f"{cents:02d}" if sub_cent == 0 else f"{frac:06d}".rstrip("0")
    return f"{sign}${whole:,}.{tail}"


def micro_to_cents_exact(micro: int) -> int:
    """Convert micro-USD to Stripe's cents; the amount must be a whole number of cents."""
    cents, remainder = divmod(micro, MICRO_PER_CENT)
    if remainder:
        raise UnitError("amount must be a whole number of cents")
    return cents


def cents_to_micro(cents: int) -> int:
    return cents * MICRO_PER_CENT


def div_floor(numerator: int, denominator: int) -> tuple[int, int]:
    """Floor division for non-negative integers: (quotient, remainder). The remainder is booked."""
    if numerator < 0 or denominator <= 0:
        raise ValueError("div_floor takes a non-negative numerator and a positive denominator")
    return divmod(numerator, denominator)


def cost_floor_micro(*, tokens: int, price_micro_per_m: int) -> int:
    """Cost of `tokens` billable tokens at a price per million, rounded down to the micro-USD.

    Draw-downs use it cumulatively: cost so far = cost_floor_micro(tokens so far), and each
    increment is the difference, so many small usages add up exactly to one big one.
    """
    quotient, _ = div_floor(tokens * price_micro_per_m, TOKENS_PER_PRICE_UNIT)
    return quotient


def cost_ceil_micro(*, tokens: int, price_micro_per_m: int) -> int:
    """Cost of `tokens` billable tokens rounded up to the micro-USD: what a hold must cover."""
    return -((-tokens * price_micro_per_m) // TOKENS_PER_PRICE_UNIT)


def billable_tokens(
    *,
    input_tokens: int,
    cached_input_tokens: int,
    output_tokens: int,
    output_weight_bp: int,
    cache_weight_bp: int,
) -> int:
    """input + cached x cache weight + output x output weight, each weighted part rounded down.

    One rule for every meter (the relay, providers' and buyers' reports), so two sources of
    one request agree to the token.
    """
    return (
        input_tokens
        + bp_floor(cached_input_tokens, cache_weight_bp)
        + bp_floor(output_tokens, output_weight_bp)
    )


def bp_floor(amount_micro: int, bp: int) -> int:
    """`amount_micro` x `bp` basis points, rounded down (fees are never rounded in our favour)."""
    quotient, _ = div_floor(amount_micro * bp, BP_PER_UNIT)
    return quotient


def bp_ceil(amount_micro: int, bp: int) -> int:
    """`amount_micro` x `bp` basis points, rounded up (holds must cover the worst case)."""
    return -((-amount_micro * bp) // BP_PER_UNIT)
