"""Order entry under real concurrency on PostgreSQL (skipped on SQLite, which has one writer)."""

import pytest

from core.errors import IdempotencyKeyReused, InsufficientFunds
from marketplace import engine
from marketplace.errors import CapacityExceeded, OrderNotLive
from marketplace.models import Order, Trade
from marketplace.services import order_cancel, order_place, order_reduce
from marketplace.tasks import market_match_task
from settlement.models import Hold, LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.concurrency import race

Kind = LedgerAccount.Kind
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

BID_10_AT_5_HOLD = 50_125_000  # 10 lots of 1M at $5.00 + 25 bp


@pytest.fixture(autouse=True)
def queued(monkeypatch):
    """Record the match runs placing queues instead of running them inline."""
    sent = []
    monkeypatch.setattr(
        market_match_task,
        "apply_async",
        lambda args=None, kwargs=None, **options: sent.append(args),
    )
    return sent


def bid(principal, market, **fields):
    fields = {"side": "buy", "price_micro": 5_000_000, "lots": 10, **fields}
    return order_place(principal=principal, market_id=market.id, **fields)


def test_ten_bids_against_funds_for_five_accept_exactly_five(buyer, fund, market, queued):
    fund(buyer.org.id, 5 * BID_10_AT_5_HOLD)

    results = race(10, lambda i: bid(buyer, market))

    placed = [r for r in results if isinstance(r, Order)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert (len(placed), len(refused)) == (5, 5), results
    assert Order.objects.count() == 5
    assert Hold.objects.count() == 5
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 5 * BID_10_AT_5_HOLD
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert len(queued) == 5
    assert ledger_check() == []


def test_ten_asks_against_capacity_for_five_accept_exactly_five(seller, market):
    def ask(i: int):
        return order_place(
            principal=seller, market_id=market.id, side="sell", price_micro=5_000_000, lots=10
        )

    results = race(10, ask)

    placed = [r for r in results if isinstance(r, Order)]
    refused = [r for r in results if isinstance(r, CapacityExceeded)]
    assert (len(placed), len(refused)) == (5, 5), results
    assert Order.objects.filter(side="sell").count() == 5


def test_one_idempotency_key_from_ten_threads_places_one_order(buyer, fund, market):
    fund(buyer.org.id, 10 * BID_10_AT_5_HOLD)

    results = race(10, lambda i: bid(buyer, market, idempotency_key="same-key-1").id)

    assert len(set(results)) == 1, results
    assert Order.objects.count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == BID_10_AT_5_HOLD
    assert ledger_check() == []


def test_one_key_with_different_orders_from_threads_places_one(buyer, fund, market):
    fund(buyer.org.id, 10 * BID_10_AT_5_HOLD)

    results = race(6, lambda i: bid(buyer, market, idempotency_key="same-key-2", lots=2 + i))

    assert len([r for r in results if isinstance(r, Order)]) == 1, results
    assert len([r for r in results if isinstance(r, IdempotencyKeyReused)]) == 5, results
    assert Order.objects.count() == 1


def test_ten_cancels_of_one_order_release_its_hold_once(buyer, fund, market):
    fund(buyer.org.id, BID_10_AT_5_HOLD)
    order = bid(buyer, market)

    results = race(10, lambda i: order_cancel(principal=buyer, order_id=order.id))

    assert len([r for r in results if isinstance(r, Order)]) == 1, results
    assert len([r for r in results if isinstance(r, OrderNotLive)]) == 9, results
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == BID_10_AT_5_HOLD
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert ledger_check() == []


@pytest.mark.parametrize("round_", range(5))
def test_a_cancel_racing_the_engine_either_cancels_or_finds_the_bid_filled(
    buyer, seller, fund, market, round_
):
    engine._BOOKS.clear()
    fund(buyer.org.id, BID_10_AT_5_HOLD)
    order_place(principal=seller, market_id=market.id, side="sell", price_micro=5_000_000, lots=10)
    order = bid(buyer, market)

    def work(i: int):
        if i == 0:
            return engine.market_match(market_id=market.id)
        return order_cancel(principal=buyer, order_id=order.id)

    results = race(2, work)

    order.refresh_from_db()
    if isinstance(results[1], Order):
        assert order.status == Order.Status.CANCELLED
        assert not Trade.objects.exists()
        assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == BID_10_AT_5_HOLD
    else:
        assert isinstance(results[1], OrderNotLive), results
        assert order.status == Order.Status.FILLED
        assert Trade.objects.count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert ledger_check() == []


def test_one_reduce_key_from_ten_threads_reduces_once(buyer, fund, market):
    fund(buyer.org.id, BID_10_AT_5_HOLD)
    order = bid(buyer, market)

    results = race(
        10,
        lambda i: (
            order_reduce(
                principal=buyer, order_id=order.id, by_lots=3, idempotency_key="reduce-race-1"
            ).lots
        ),
    )

    assert results == [7] * 10, results
    assert Order.objects.get(pk=order.pk).lots == 7
    assert order.reductions.count() == 1
    assert ledger_check() == []
