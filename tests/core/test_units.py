import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.units import (
    UnitError,
    bp_ceil,
    bp_floor,
    cost_floor_micro,
    micro_to_cents_exact,
    money_display,
    money_format,
    money_parse,
)


@pytest.mark.parametrize(
    ("text", "micro"),
    [("50", 50_000_000), ("50.00", 50_000_000), ("0.000001", 1), ("-1.5", -1_500_000)],
)
def test_money_parse_reads_exact_decimal_strings(text, micro):
    assert money_parse(text) == micro


@pytest.mark.parametrize("text", ["", "abc", "1e3", "NaN", "Infinity", "1.0000001", " ", "1,000"])
def test_money_parse_refuses_anything_inexact(text):
    with pytest.raises(UnitError):
        money_parse(text)


def test_money_parse_refuses_non_strings():
    with pytest.raises(UnitError):
        money_parse(50.0)


def test_money_parse_respects_places():
    assert money_parse("5.25", places=2) == 5_250_000
    with pytest.raises(UnitError):
        money_parse("5.255", places=2)


@given(st.integers(min_value=-(10**15), max_value=10**15))
def test_money_format_round_trips(micro):
    assert money_parse(money_format(micro)) == micro


def test_money_display_is_for_people():
    assert money_display(1_234_500_000) == "$1,234.50"
    assert money_display(1_234_567) == "$1.234567"
    assert money_display(-50_000_000) == "-$50.00"


def test_cents_conversion_refuses_fractions_of_a_cent():
    assert micro_to_cents_exact(50_000_000) == 5000
    with pytest.raises(UnitError):
        micro_to_cents_exact(50_000_001)


@given(
    st.lists(st.integers(min_value=0, max_value=10**7), min_size=1, max_size=50),
    st.integers(min_value=1, max_value=10**9),
)
def test_cumulative_cost_of_many_draws_equals_one_big_draw(draws, price_micro_per_m):
    charged = 0
    used = 0
    for tokens in draws:
        used += tokens
        charged += cost_floor_micro(tokens=used, price_micro_per_m=price_micro_per_m) - charged
    assert charged == cost_floor_micro(tokens=sum(draws), price_micro_per_m=price_micro_per_m)


@given(st.integers(min_value=0, max_value=10**12), st.integers(min_value=0, max_value=10_000))
def test_bp_rounding_brackets_the_exact_value(amount, bp):
    assert bp_floor(amount, bp) * 10_000 <= amount * bp <= bp_ceil(amount, bp) * 10_000
    assert bp_ceil(amount, bp) - bp_floor(amount, bp) in (0, 1)
