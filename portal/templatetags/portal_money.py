"""Template filters that print integer money, counts and basis points for people; money goes
through core.units only."""

from django import template

from core.units import money_display

register = template.Library()

TIMES = "\u00d7"


@register.filter
def money(micro: int | None) -> str:
    """5_000_000 -> "$5.00"."""
    return money_display(micro or 0)


@register.filter
def signed_money(micro: int) -> str:
    """A ledger amount with its direction: "+$5.00" or "-$5.00"."""
    return money_display(micro) if micro < 0 else f"+{money_display(micro)}"


@register.filter
def signed_bp(bp: int | None) -> str:
    """A change in basis points as a percentage with its sign: 125 -> "+1.25%", None -> "—"."""
    if bp is None:
        return "—"
    sign = "-" if bp < 0 else "+"
    whole, hundredths = divmod(abs(bp), 100)
    return f"{sign}{whole}.{hundredths:02d}%"


@register.filter
def count(number: int | None) -> str:
    """An integer count for people, with thousands separators: 5000000 -> "5,000,000"."""
    return "—" if number is None else f"{number:,}"


@register.filter
def price(micro: int | None) -> str:
    """A price per 1M billable tokens, or a dash when there is none (no trade, empty side)."""
    return "—" if micro is None else money_display(micro)


@register.filter
def bp_multiple(bp: int) -> str:
    """A weight in basis points as a multiple: 60000 -> "6x", 1000 -> "0.1x" (a times sign)."""
    whole, frac = divmod(bp, 10_000)
    tail = f"{frac:04d}".rstrip("0")
    return f"{whole}.{tail}{TIMES}" if tail else f"{whole}{TIMES}"
