"""Example-based tests of `OrderBook`, one behaviour each.

Orgs are "a", "b" and "c"; "a" meeting "a" is a self-trade. Prices are in ticks.
"""

import subprocess
import sys
from pathlib import Path

import pytest

from marketplace.matching import (
    Accepted,
    Cancelled,
    Expired,
    Order,
    OrderBook,
    Preview,
    Reduced,
    Rejected,
    RestingOrder,
    Trade,
)

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def limit(order_id, side, price_ticks, lots, org="a", tif="GTC", **options) -> Order:
    return Order(order_id, org, side, "limit", price_ticks, lots, tif, **options)


def market(order_id, side, lots, org="a", tif="IOC", **options) -> Order:
    return Order(order_id, org, side, "market", None, lots, tif, **options)


def book_with(*orders: Order) -> OrderBook:
    book = OrderBook()
    for order in orders:
        assert book.submit(order) == [Accepted(order.id)]
    return book


# Price-time priority


def test_trade_happens_at_the_makers_price():
    book = book_with(limit("s1", "sell", 100, 5, org="b"))
    assert book.submit(limit("b1", "buy", 105, 5)) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 5),
    ]


def test_a_selling_taker_also_trades_at_the_makers_price():
    book = book_with(limit("b1", "buy", 105, 5, org="b"))
    assert book.submit(limit("s1", "sell", 100, 5)) == [
        Accepted("s1"),
        Trade("s1", "b1", 105, 5),
    ]


def test_better_price_matches_before_earlier_time():
    book = book_with(
        limit("s1", "sell", 101, 5, org="b"),
        limit("s2", "sell", 100, 5, org="c"),
    )
    events = book.submit(limit("b1", "buy", 101, 7))
    assert events == [
        Accepted("b1"),
        Trade("b1", "s2", 100, 5),
        Trade("b1", "s1", 101, 2),
    ]


def test_earlier_order_at_a_price_matches_first():
    book = book_with(
        limit("s1", "sell", 100, 3, org="b"),
        limit("s2", "sell", 100, 3, org="c"),
    )
    assert book.submit(limit("b1", "buy", 100, 4)) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 3),
        Trade("b1", "s2", 100, 1),
    ]
    assert book.resting("s2") == 2


def test_taker_does_not_trade_beyond_its_limit_price():
    book = book_with(limit("s1", "sell", 101, 5, org="b"))
    assert book.submit(limit("b1", "buy", 100, 5)) == [Accepted("b1")]
    assert (book.best_bid(), book.best_ask()) == (100, 101)


def test_unfilled_part_of_a_gtc_order_rests_at_its_price():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.submit(limit("b1", "buy", 102, 5)) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 2),
    ]
    assert book.resting("b1") == 3
    assert book.best_bid() == 102


# IOC, market, FOK


def test_ioc_remainder_expires_and_does_not_rest():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.submit(limit("b1", "buy", 100, 5, tif="IOC")) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 2),
        Expired("b1", 3),
    ]
    assert book.resting("b1") is None
    assert len(book) == 0


def test_market_order_never_rests():
    book = OrderBook()
    assert book.submit(market("m1", "buy", 5)) == [Accepted("m1"), Expired("m1", 5)]
    assert len(book) == 0
    assert book.best_bid() is None


def test_market_order_sweeps_levels_at_each_makers_price():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 150, 2, org="b"),
    )
    assert book.submit(market("m1", "buy", 3)) == [
        Accepted("m1"),
        Trade("m1", "s1", 100, 2),
        Trade("m1", "s2", 150, 1),
    ]


def test_market_order_with_gtc_is_rejected_as_invalid_tif():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.submit(market("m1", "buy", 1, tif="GTC")) == [Rejected("m1", "invalid_tif")]
    assert book.resting("s1") == 2


def test_fok_that_cannot_fill_trades_nothing():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 101, 2, org="c"),
    )
    before = list(book)
    assert book.submit(limit("b1", "buy", 101, 5, tif="FOK")) == [
        Accepted("b1"),
        Expired("b1", 5),
    ]
    assert list(book) == before


def test_fok_that_can_fill_fills_completely():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 101, 4, org="c"),
    )
    assert book.submit(limit("b1", "buy", 101, 5, tif="FOK")) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 2),
        Trade("b1", "s2", 101, 3),
    ]


def test_fok_counts_only_lots_within_its_limit_price():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 102, 10, org="c"),
    )
    assert book.submit(limit("b1", "buy", 101, 3, tif="FOK")) == [
        Accepted("b1"),
        Expired("b1", 3),
    ]


def test_market_fok_that_cannot_fill_trades_nothing():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.submit(market("m1", "buy", 3, tif="FOK")) == [Accepted("m1"), Expired("m1", 3)]
    assert book.resting("s1") == 2


def test_fok_blocked_by_its_own_org_under_expire_taker_trades_nothing():
    # Enough lots in total, but the taker would expire on meeting its own order first.
    book = book_with(
        limit("s1", "sell", 100, 2, org="a"),
        limit("s2", "sell", 101, 10, org="b"),
    )
    assert book.submit(limit("b1", "buy", 101, 5, tif="FOK")) == [
        Accepted("b1"),
        Expired("b1", 5),
    ]
    assert [order.id for order in book] == ["s1", "s2"]


def test_fok_under_expire_maker_skips_its_own_orders_when_counting():
    book = book_with(
        limit("s1", "sell", 100, 2, org="a"),
        limit("s2", "sell", 101, 5, org="b"),
    )
    assert book.submit(limit("b1", "buy", 101, 5, tif="FOK", stp="expire_maker")) == [
        Accepted("b1"),
        Expired("s1", 2),
        Trade("b1", "s2", 101, 5),
    ]


def test_fok_under_expire_maker_that_cannot_fill_expires_no_maker():
    book = book_with(
        limit("s1", "sell", 100, 2, org="a"),
        limit("s2", "sell", 101, 4, org="b"),
    )
    assert book.submit(limit("b1", "buy", 101, 5, tif="FOK", stp="expire_maker")) == [
        Accepted("b1"),
        Expired("b1", 5),
    ]
    assert book.resting("s1") == 2


# Post-only


def test_post_only_that_would_take_is_rejected():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.submit(limit("b1", "buy", 100, 1, post_only=True)) == [
        Rejected("b1", "post_only_would_take")
    ]
    assert book.resting("s1") == 2


def test_post_only_that_would_not_take_rests():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.submit(limit("b1", "buy", 99, 1, post_only=True)) == [Accepted("b1")]
    assert book.resting("b1") == 1


def test_post_only_is_rejected_even_when_only_its_own_org_would_be_met():
    book = book_with(limit("s1", "sell", 100, 2, org="a"))
    assert book.submit(limit("b1", "buy", 100, 1, post_only=True)) == [
        Rejected("b1", "post_only_would_take")
    ]


def test_post_only_on_a_market_order_is_rejected():
    assert OrderBook().submit(market("m1", "buy", 1, post_only=True)) == [
        Rejected("m1", "invalid_post_only")
    ]


def test_post_only_on_an_ioc_order_is_rejected():
    assert OrderBook().submit(limit("b1", "buy", 100, 1, tif="IOC", post_only=True)) == [
        Rejected("b1", "invalid_post_only")
    ]


# Self-trade prevention


def test_stp_expire_taker_expires_the_taker_and_keeps_the_maker():
    book = book_with(limit("s1", "sell", 100, 2, org="a"))
    assert book.submit(limit("b1", "buy", 100, 3)) == [Accepted("b1"), Expired("b1", 3)]
    assert book.resting("s1") == 2
    assert book.resting("b1") is None


def test_stp_expire_taker_keeps_the_trades_made_before_meeting_its_own_order():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 100, 2, org="a"),
        limit("s3", "sell", 100, 2, org="c"),
    )
    assert book.submit(limit("b1", "buy", 100, 5)) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 2),
        Expired("b1", 3),
    ]
    assert [order.id for order in book] == ["s2", "s3"]


def test_stp_expire_maker_removes_the_maker_and_matching_continues():
    book = book_with(
        limit("s1", "sell", 100, 2, org="a"),
        limit("s2", "sell", 101, 2, org="b"),
    )
    assert book.submit(limit("b1", "buy", 101, 3, stp="expire_maker")) == [
        Accepted("b1"),
        Expired("s1", 2),
        Trade("b1", "s2", 101, 2),
    ]
    assert book.resting("s1") is None
    assert book.resting("b1") == 1


def test_stp_expire_both_expires_maker_and_taker():
    book = book_with(
        limit("s1", "sell", 100, 2, org="a"),
        limit("s2", "sell", 100, 2, org="b"),
    )
    assert book.submit(limit("b1", "buy", 100, 3, stp="expire_both")) == [
        Accepted("b1"),
        Expired("s1", 2),
        Expired("b1", 3),
    ]
    assert [order.id for order in book] == ["s2"]


def test_stp_none_lets_the_same_org_trade():
    book = book_with(limit("s1", "sell", 100, 2, org="a"))
    assert book.submit(limit("b1", "buy", 100, 2, stp="none")) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 2),
    ]


def test_stp_is_decided_by_the_takers_mode_not_the_makers():
    book = book_with(limit("s1", "sell", 100, 2, org="a", stp="none"))
    assert book.submit(limit("b1", "buy", 100, 2)) == [Accepted("b1"), Expired("b1", 2)]


# Validation


@pytest.mark.parametrize(
    ("order", "reason"),
    [
        (limit("x", "buy", 100, 0), "invalid_lots"),
        (limit("x", "buy", 100, -3), "invalid_lots"),
        (Order("x", "a", "buy", "limit", 100, 2.0), "invalid_lots"),
        (limit("x", "buy", 0, 1), "invalid_price"),
        (limit("x", "buy", None, 1), "invalid_price"),
        (Order("x", "a", "buy", "market", 100, 1, "IOC"), "invalid_price"),
        (Order("x", "a", "hold", "limit", 100, 1), "invalid_side"),
        (Order("x", "a", "buy", "stop", 100, 1), "invalid_type"),
        (limit("x", "buy", 100, 1, tif="DAY"), "invalid_tif"),
        (limit("x", "buy", 100, 1, stp="cancel_both"), "invalid_stp"),
    ],
)
def test_invalid_order_is_rejected_with_its_reason(order, reason):
    book = OrderBook()
    assert book.submit(order) == [Rejected("x", reason)]
    assert len(book) == 0


def test_duplicate_id_of_a_resting_order_is_rejected():
    book = book_with(limit("o1", "buy", 100, 1))
    assert book.submit(limit("o1", "buy", 99, 1)) == [Rejected("o1", "duplicate_id")]
    assert book.resting("o1") == 1


def test_duplicate_id_of_an_order_that_left_the_book_is_rejected():
    book = OrderBook()
    book.submit(market("m1", "buy", 1))
    assert book.submit(limit("m1", "buy", 100, 1)) == [Rejected("m1", "duplicate_id")]


def test_id_of_a_rejected_order_can_be_used_again():
    book = OrderBook()
    assert book.submit(limit("o1", "buy", 100, 0)) == [Rejected("o1", "invalid_lots")]
    assert book.submit(limit("o1", "buy", 100, 1)) == [Accepted("o1")]


# Cancel and reduce


def test_cancel_removes_the_order_and_reports_its_remaining_lots():
    book = book_with(limit("s1", "sell", 100, 5, org="b"))
    book.submit(limit("b1", "buy", 100, 2))
    assert book.cancel("s1") == [Cancelled("s1", 3)]
    assert book.resting("s1") is None
    assert book.best_ask() is None
    assert len(book) == 0


def test_cancel_of_an_unknown_order_is_rejected():
    assert OrderBook().cancel("nope") == [Rejected("nope", "unknown_order")]


def test_cancel_of_an_order_no_longer_resting_is_rejected():
    book = book_with(limit("s1", "sell", 100, 1, org="b"))
    book.submit(limit("b1", "buy", 100, 1))
    assert book.cancel("s1") == [Rejected("s1", "unknown_order")]


def test_cancelled_order_at_the_front_of_a_level_is_skipped():
    book = book_with(
        limit("s1", "sell", 100, 1, org="b"),
        limit("s2", "sell", 100, 1, org="c"),
    )
    book.cancel("s1")
    assert book.submit(limit("b1", "buy", 100, 1)) == [
        Accepted("b1"),
        Trade("b1", "s2", 100, 1),
    ]


def test_many_cancels_within_one_level_keep_the_rest_in_time_order():
    book = book_with(*[limit(f"s{n}", "sell", 100, 1, org="b") for n in range(100)])
    for n in range(100):
        if n % 3:
            book.cancel(f"s{n}")
    survivors = [f"s{n}" for n in range(100) if n % 3 == 0]
    assert [order.id for order in book] == survivors
    events = book.submit(limit("b1", "buy", 100, len(survivors)))
    assert [event.maker for event in events[1:]] == survivors


def test_reduce_keeps_time_priority():
    book = book_with(
        limit("s1", "sell", 100, 5, org="b"),
        limit("s2", "sell", 100, 5, org="c"),
    )
    assert book.reduce("s1", 3) == [Reduced("s1", 2)]
    assert book.submit(limit("b1", "buy", 100, 3)) == [
        Accepted("b1"),
        Trade("b1", "s1", 100, 2),
        Trade("b1", "s2", 100, 1),
    ]


def test_reduce_by_all_remaining_lots_removes_the_order_and_reports_zero():
    book = book_with(limit("s1", "sell", 100, 5, org="b"))
    assert book.reduce("s1", 5) == [Reduced("s1", 0)]
    assert book.resting("s1") is None
    assert book.best_ask() is None


def test_reduce_by_more_than_remaining_removes_the_order_and_reports_zero():
    book = book_with(limit("s1", "sell", 100, 5, org="b"))
    assert book.reduce("s1", 50) == [Reduced("s1", 0)]
    assert len(book) == 0


@pytest.mark.parametrize("by_lots", [0, -1, 1.5, True])
def test_reduce_by_a_non_positive_or_non_integer_amount_is_rejected(by_lots):
    book = book_with(limit("s1", "sell", 100, 5, org="b"))
    assert book.reduce("s1", by_lots) == [Rejected("s1", "invalid_reduce")]
    assert book.resting("s1") == 5


def test_reduce_of_an_unknown_order_is_rejected():
    assert OrderBook().reduce("nope", 1) == [Rejected("nope", "unknown_order")]


def test_reduce_lowers_the_level_total():
    book = book_with(limit("b1", "buy", 100, 5), limit("b2", "buy", 100, 5))
    book.reduce("b1", 4)
    assert book.depth(1) == ([(100, 6)], [])


# Views


def test_best_prices_and_depth_aggregate_lots_per_level_best_first():
    book = book_with(
        limit("b1", "buy", 98, 1),
        limit("b2", "buy", 99, 2),
        limit("b3", "buy", 99, 3),
        limit("b4", "buy", 97, 4),
        limit("s1", "sell", 101, 5, org="b"),
        limit("s2", "sell", 103, 6, org="b"),
    )
    assert (book.best_bid(), book.best_ask()) == (99, 101)
    assert book.depth(2) == ([(99, 5), (98, 1)], [(101, 5), (103, 6)])
    assert book.depth(10) == ([(99, 5), (98, 1), (97, 4)], [(101, 5), (103, 6)])


def test_empty_levels_do_not_show_in_best_prices_or_depth():
    book = book_with(limit("b1", "buy", 99, 1), limit("b2", "buy", 98, 1))
    book.cancel("b1")
    assert book.best_bid() == 98
    assert book.depth(5) == ([(98, 1)], [])


def test_iteration_lists_resting_orders_in_priority_order():
    book = book_with(
        limit("b1", "buy", 98, 1),
        limit("s1", "sell", 102, 1, org="b"),
        limit("b2", "buy", 99, 2),
        limit("b3", "buy", 98, 3),
        limit("s2", "sell", 101, 4, org="b"),
    )
    assert len(book) == 5
    assert list(book) == [
        RestingOrder("b2", "a", "buy", 99, 2),
        RestingOrder("b1", "a", "buy", 98, 1),
        RestingOrder("b3", "a", "buy", 98, 3),
        RestingOrder("s2", "b", "sell", 101, 4),
        RestingOrder("s1", "b", "sell", 102, 1),
    ]


def test_preview_reports_lots_and_notional_and_changes_nothing():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 102, 5, org="b"),
    )
    before = list(book)
    assert book.preview(limit(None, "buy", 102, 4)) == Preview(4, 2 * 100 + 2 * 102)
    assert book.preview(market(None, "buy", 100)) == Preview(7, 2 * 100 + 5 * 102)
    assert list(book) == before


def test_preview_of_an_unfillable_fok_is_zero():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.preview(limit(None, "buy", 100, 3, tif="FOK")) == Preview(0, 0)


def test_preview_stops_where_self_trade_prevention_would_stop_the_taker():
    book = book_with(
        limit("s1", "sell", 100, 2, org="b"),
        limit("s2", "sell", 101, 2, org="a"),
        limit("s3", "sell", 102, 2, org="c"),
    )
    assert book.preview(market(None, "buy", 6)) == Preview(2, 200)
    assert book.preview(market(None, "buy", 6, stp="expire_maker")) == Preview(4, 200 + 204)
    assert book.preview(market(None, "buy", 6, stp="none")) == Preview(6, 200 + 202 + 204)


def test_preview_gives_the_rejection_submit_would_give():
    book = book_with(limit("s1", "sell", 100, 2, org="b"))
    assert book.preview(limit(None, "buy", 100, 1, post_only=True)) == Preview(
        0, 0, "post_only_would_take"
    )
    assert book.preview(limit(None, "buy", 100, 0)) == Preview(0, 0, "invalid_lots")


# Rebuilding from storage


def test_load_resting_rebuilds_the_book_without_matching():
    original = book_with(
        limit("b1", "buy", 99, 2),
        limit("b2", "buy", 99, 3, org="b"),
        limit("s1", "sell", 101, 4, org="c"),
    )
    original.reduce("b1", 1)
    rebuilt = OrderBook()
    for resting in original:
        rebuilt.load_resting(
            Order(resting.id, resting.org, resting.side, "limit", resting.price_ticks, resting.lots)
        )
    assert list(rebuilt) == list(original)
    taker = limit("t1", "sell", 99, 4, org="c")
    assert rebuilt.submit(taker) == original.submit(taker)


def test_load_resting_raises_for_an_order_that_would_cross():
    book = OrderBook()
    book.load_resting(limit("s1", "sell", 100, 1, org="b"))
    with pytest.raises(ValueError, match="cross"):
        book.load_resting(limit("b1", "buy", 100, 1))
    assert len(book) == 1


def test_load_resting_raises_for_an_order_that_cannot_rest():
    book = OrderBook()
    with pytest.raises(ValueError, match="GTC limit"):
        book.load_resting(limit("b1", "buy", 100, 1, tif="IOC"))
    with pytest.raises(ValueError, match="invalid_lots"):
        book.load_resting(limit("b1", "buy", 100, 0))
    book.load_resting(limit("b1", "buy", 100, 1))
    with pytest.raises(ValueError, match="duplicate"):
        book.load_resting(limit("b1", "buy", 99, 1))


# Events and the module itself


def test_events_turn_into_their_wire_dicts():
    assert Accepted("o1").to_dict() == {"event": "accepted", "id": "o1"}
    assert Rejected("o1", "invalid_lots").to_dict() == {
        "event": "rejected",
        "id": "o1",
        "reason": "invalid_lots",
    }
    assert Trade("t", "m", 100, 2).to_dict() == {
        "event": "trade",
        "taker": "t",
        "maker": "m",
        "price": 100,
        "lots": 2,
    }
    assert Expired(7, 3).to_dict() == {"event": "expired", "id": 7, "lots": 3}
    assert Cancelled(7, 3).to_dict() == {"event": "cancelled", "id": 7, "lots": 3}
    assert Reduced(7, 0).to_dict() == {"event": "reduced", "id": 7, "lots": 0}


def test_events_of_different_kinds_with_equal_fields_are_not_equal():
    assert Expired("o1", 3) != Cancelled("o1", 3)


def test_the_matching_package_does_not_import_django():
    code = (
        "import sys, marketplace.matching, marketplace.matching.replay; "
        "sys.exit('django' in sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, check=True)
