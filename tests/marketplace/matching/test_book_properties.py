"""Hypothesis: `OrderBook` against a naive model, and the properties that must always hold.

The state machine sends the same random commands to the engine and to `ModelBook` (plain lists,
re-sorted every step, FOK decided by executing on a copy) and, after every command, checks that
both emitted the same events and that the engine's book keeps every invariant: never crossed,
lots conserved, price-time priority, trades at the maker's price, IOC and market orders never
resting, FOK all or nothing, and no self-trade unless the taker chose `none`.

Prices are drawn from a few ticks so that orders meet, and orgs from three so that STP fires.
"""

import json
from itertools import pairwise

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from marketplace.matching import (
    Accepted,
    Cancelled,
    Expired,
    Order,
    OrderBook,
    Reduced,
    Rejected,
    Trade,
)
from marketplace.matching.replay import apply_line
from tests.marketplace.matching.model import ModelBook

ORGS = ("a", "b", "c")
STP_MODES = ("expire_taker", "expire_maker", "expire_both", "none")
PRICES = st.integers(min_value=97, max_value=103)
LOTS = st.integers(min_value=1, max_value=6)


@st.composite
def valid_orders(draw, order_id):
    """A valid order, GTC limit most often, with all the other kinds mixed in."""
    order_type = draw(st.sampled_from(("limit", "limit", "limit", "market")))
    if order_type == "market":
        tif = draw(st.sampled_from(("IOC", "FOK")))
        price_ticks = None
    else:
        tif = draw(st.sampled_from(("GTC", "GTC", "GTC", "IOC", "FOK")))
        price_ticks = draw(PRICES)
    post_only = tif == "GTC" and order_type == "limit" and draw(st.integers(0, 4)) == 0
    return Order(
        id=order_id,
        org=draw(st.sampled_from(ORGS)),
        side=draw(st.sampled_from(("buy", "sell"))),
        type=order_type,
        price_ticks=price_ticks,
        lots=draw(LOTS),
        tif=tif,
        post_only=post_only,
        stp=draw(st.sampled_from(STP_MODES)),
    )


@st.composite
def invalid_orders(draw, order_id):
    """An order that breaks exactly one rule (some may also trip an earlier rule)."""
    base = draw(valid_orders(order_id))
    fault = draw(
        st.sampled_from(
            (
                "lots",
                "price",
                "market_gtc",
                "market_price",
                "post_only",
                "side",
                "type",
                "tif",
                "stp",
            )
        )
    )
    if fault == "lots":
        base.lots = draw(st.sampled_from((0, -1)))
    elif fault == "price":
        base.type, base.price_ticks = "limit", draw(st.sampled_from((0, -5, None)))
    elif fault == "market_gtc":
        base.type, base.price_ticks, base.tif = "market", None, "GTC"
    elif fault == "market_price":
        base.type, base.price_ticks, base.tif = "market", 100, "IOC"
    elif fault == "post_only":
        base.post_only, base.tif = True, draw(st.sampled_from(("IOC", "FOK")))
    elif fault == "side":
        base.side = "hold"
    elif fault == "type":
        base.type = "stop"
    elif fault == "tif":
        base.tif = "DAY"
    else:
        base.stp = "cancel_newest"
    return base


def as_model_order(order: Order) -> dict:
    return {
        "id": order.id,
        "org": order.org,
        "side": order.side,
        "type": order.type,
        "price": order.price_ticks,
        "lots": order.lots,
        "tif": order.tif,
        "post_only": order.post_only,
        "stp": order.stp,
    }


class BookAgainstModel(RuleBasedStateMachine):
    def __init__(self):
        super().__init__()
        self.book = OrderBook()
        self.model = ModelBook()
        self.used_ids = []
        self.next_number = 0
        self.arrival = {}  # id -> arrival number of an accepted order, for time priority
        # Lots ledger: every accepted lot ends traded (on both sides), resting, expired,
        # cancelled or reduced away.
        self.accepted_lots = 0
        self.traded_lots = 0
        self.expired_lots = 0
        self.cancelled_lots = 0
        self.reduced_away_lots = 0

    def _fresh_id(self) -> str:
        self.next_number += 1
        return f"o{self.next_number}"

    def _record(self, events) -> None:
        for event in events:
            kind = type(event)
            if kind is Accepted:
                self.arrival[event.id] = len(self.arrival)
            elif kind is Trade:
                self.traded_lots += event.lots
            elif kind is Expired:
                self.expired_lots += event.lots
            elif kind is Cancelled:
                self.cancelled_lots += event.lots

    def _submit(self, order: Order) -> None:
        resting_before = {resting.id: resting for resting in self.book}
        events = self.book.submit(order)
        assert [event.to_dict() for event in events] == self.model.submit(as_model_order(order))
        self.used_ids.append(order.id)

        if type(events[0]) is Rejected:
            assert len(events) == 1
            return
        assert events[0] == Accepted(order.id)
        assert Accepted not in {type(event) for event in events[1:]}
        self.accepted_lots += order.lots
        self._record(events)

        trades = [event for event in events if type(event) is Trade]
        for trade in trades:
            maker = resting_before[trade.maker]
            assert trade.taker == order.id
            assert trade.price_ticks == maker.price_ticks, "trades happen at the maker's price"
            if maker.org == order.org:
                assert order.stp == "none", "self-trade under an STP mode that forbids it"
        if order.tif != "GTC":
            assert self.book.resting(order.id) is None, "IOC, FOK and market orders never rest"
        if order.tif == "FOK":
            assert sum(trade.lots for trade in trades) in (0, order.lots)
            if not trades:
                assert events[1:] == [Expired(order.id, order.lots)]
                assert {resting.id: resting for resting in self.book} == resting_before

    @rule(data=st.data())
    def submit_new_order(self, data):
        self._submit(data.draw(valid_orders(self._fresh_id())))

    @rule(data=st.data())
    def submit_invalid_order(self, data):
        self._submit(data.draw(invalid_orders(self._fresh_id())))

    @precondition(lambda self: self.used_ids)
    @rule(data=st.data())
    def submit_with_a_used_id(self, data):
        order_id = data.draw(st.sampled_from(self.used_ids))
        self._submit(data.draw(valid_orders(order_id)))

    def _some_id(self, data):
        if self.used_ids and data.draw(st.integers(0, 5)):
            return data.draw(st.sampled_from(self.used_ids))
        return "never-submitted"

    @rule(data=st.data())
    def cancel(self, data):
        order_id = self._some_id(data)
        events = self.book.cancel(order_id)
        assert [event.to_dict() for event in events] == self.model.cancel(order_id)
        self._record(events)

    @rule(data=st.data(), by_lots=st.integers(min_value=-1, max_value=7))
    def reduce(self, data, by_lots):
        order_id = self._some_id(data)
        lots_before = self.book.resting(order_id)
        events = self.book.reduce(order_id, by_lots)
        assert [event.to_dict() for event in events] == self.model.reduce(order_id, by_lots)
        if type(events[0]) is Reduced:
            self.reduced_away_lots += lots_before - events[0].lots
            assert self.book.resting(order_id) == (events[0].lots or None)

    @invariant()
    def matches_the_model_snapshot(self):
        assert [tuple(resting) for resting in self.book] == self.model.snapshot()
        assert len(self.book) == len(self.model.resting)

    @invariant()
    def book_is_never_crossed(self):
        best_bid, best_ask = self.book.best_bid(), self.book.best_ask()
        if best_bid is not None and best_ask is not None:
            assert best_bid < best_ask

    @invariant()
    def lots_are_conserved(self):
        resting_lots = sum(resting.lots for resting in self.book)
        assert self.accepted_lots == (
            2 * self.traded_lots
            + resting_lots
            + self.expired_lots
            + self.cancelled_lots
            + self.reduced_away_lots
        )

    @invariant()
    def price_time_priority_holds(self):
        resting = list(self.book)
        bids = [order for order in resting if order.side == "buy"]
        asks = [order for order in resting if order.side == "sell"]
        assert resting == bids + asks
        for side, orders in ((1, bids), (-1, asks)):
            for earlier, later in pairwise(orders):
                if earlier.price_ticks == later.price_ticks:
                    assert self.arrival[earlier.id] < self.arrival[later.id]
                else:
                    assert side * earlier.price_ticks > side * later.price_ticks

    @invariant()
    def depth_and_best_prices_agree_with_the_resting_orders(self):
        levels = {}
        for resting in self.book:
            key = (resting.side, resting.price_ticks)
            levels[key] = levels.get(key, 0) + resting.lots
        bids, asks = self.book.depth(1000)
        assert bids == sorted(
            ((price, lots) for (side, price), lots in levels.items() if side == "buy"),
            reverse=True,
        )
        assert asks == sorted(
            (price, lots) for (side, price), lots in levels.items() if side == "sell"
        )
        assert self.book.best_bid() == (bids[0][0] if bids else None)
        assert self.book.best_ask() == (asks[0][0] if asks else None)


BookAgainstModel.TestCase.settings = settings(
    max_examples=250,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestBookAgainstModel = BookAgainstModel.TestCase


# Command streams as JSON lines, for the replay properties.

json_ids = st.sampled_from([f"o{n}" for n in range(12)])
json_commands = st.one_of(
    st.builds(
        lambda order_id, order: {
            "op": "new",
            "id": order_id,
            **{key: value for key, value in as_model_order(order).items() if key != "id"},
        },
        json_ids,
        valid_orders("unused"),
    ),
    st.builds(lambda order_id: {"op": "cancel", "id": order_id}, json_ids),
    st.builds(
        lambda order_id, by_lots: {"op": "reduce", "id": order_id, "by": by_lots},
        json_ids,
        st.integers(min_value=-1, max_value=7),
    ),
)


def _as_lines(commands: list[dict]) -> list[str]:
    lines = []
    for command in commands:
        if command["op"] == "new" and command["price"] is None:
            command = {key: value for key, value in command.items() if key != "price"}
        lines.append(json.dumps(command))
    return lines


def _replay(lines: list[str]) -> list[dict]:
    book = OrderBook()
    return [event.to_dict() for line in lines for event in apply_line(book, line)]


@settings(max_examples=150, deadline=None)
@given(st.lists(json_commands, max_size=60))
def test_replaying_a_stream_twice_gives_identical_events(commands):
    lines = _as_lines(commands)
    assert _replay(lines) == _replay(lines)


@settings(max_examples=100, deadline=None)
@given(st.lists(json_commands, max_size=40), st.lists(valid_orders("unused"), max_size=20))
def test_a_book_rebuilt_with_load_resting_behaves_like_the_original(commands, takers):
    original = OrderBook()
    for line in _as_lines(commands):
        apply_line(original, line)
    rebuilt = OrderBook()
    for resting in original:
        rebuilt.load_resting(
            Order(resting.id, resting.org, resting.side, "limit", resting.price_ticks, resting.lots)
        )
    assert list(rebuilt) == list(original)
    for number, taker in enumerate(takers):
        taker.id = f"taker-{number}"
        assert rebuilt.submit(taker) == original.submit(taker)
        assert list(rebuilt) == list(original)


@settings(max_examples=100, deadline=None)
@given(st.lists(json_commands, max_size=40), valid_orders("preview"))
def test_preview_predicts_what_submit_then_trades(commands, order):
    book = OrderBook()
    for line in _as_lines(commands):
        apply_line(book, line)
    before = list(book)
    preview = book.preview(order)
    assert list(book) == before
    events = book.submit(order)
    trades = [event for event in events if type(event) is Trade]
    assert preview.lots == sum(trade.lots for trade in trades)
    assert preview.notional == sum(trade.lots * trade.price_ticks for trade in trades)
    rejected = events[0] if type(events[0]) is Rejected else None
    assert preview.reject_reason == (rejected.reason if rejected else None)
