"""Template filters that print integer micro-USD for people, through core.units only."""

from django import template

from core.units import money_display

register = template.Library()


@register.filter
def money(micro: int | None) -> str:
    """5_000_000 -> "$5.00"."""
    return money_display(micro or 0)


@register.filter
def signed_money(micro: int) -> str:
    """A ledger amount with its direction: "+$5.00" or "-$5.00"."""
    return money_display(micro) if micro < 0 else f"+{money_display(micro)}"
