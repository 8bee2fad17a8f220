"""The matching engine: pending orders in, trades, entitlements and ledger moves out."""

import pytest

from marketplace import engine
from marketplace.models import Order, Trade
from marketplace.services import order_cancel, order_place
from settlement.models import Entitlement, LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_books():
    engine._BOOKS.clear()
    yield
    engine._BOOKS.clear()


@pytest.fixture
def place_order(market, django_capture_on_commit_callbacks):
    """Place through the service without running the queued match task (tests run it)."""

    def place(principal, **fields):
        fields = {"market_id": market.id, "lots": 10, **fields}
        with django_capture_on_commit_callbacks(execute=False):
            return order_place(principal=principal, **fields)

    return place


def _balance(principal, kind) -> int:
    return account_balance(org_id=principal.org.id, kind=kind)


def test_a_bid_meeting_an_ask_trades_at_the_makers_price(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 100_000_000)
    ask = place_order(seller, side="sell", price_micro=4_800_000)
    bid = place_order(buyer, side="buy", price_micro=5_000_000)
    assert engine.market_match(market_id=market.id) == 2

    trade = Trade.objects.get()
    assert (trade.price_micro, trade.lots, trade.tokens) == (4_800_000, 10, 10_000_000)
    assert trade.notional_micro == 48_000_000
    assert trade.buyer_fee_micro == 48_000_000 * 25 // 10_000  # the bid took: taker fee
    ask.refresh_from_db()
    bid.refresh_from_db()
    assert (ask.status, bid.status) == (Order.Status.FILLED, Order.Status.FILLED)
    assert (ask.sequence, bid.sequence) == (1, 2)

    entitlement = Entitlement.objects.get()
    assert (entitlement.buyer_org_id, entitlement.provider_org_id) == (buyer.org.id, seller.org.id)
    assert (entitlement.tokens_bought, entitlement.value_micro) == (10_000_000, 48_000_000)
    assert entitlement.output_weight_bp == market.output_weight_bp
    assert entitlement.provider_fee_bp == market.maker_fee_bp

    # Held at the limit price plus the highest fee; the price improvement and the unused fee
    # margin went back to available when the bid was filled.
    assert _balance(buyer, Kind.ESCROW) == 48_000_000
    assert _balance(buyer, Kind.HELD) == 0
    assert _balance(buyer, Kind.AVAILABLE) == 100_000_000 - 48_000_000 - trade.buyer_fee_micro
    assert ledger_check() == []


def test_an_unmatched_bid_rests_and_keeps_its_hold(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 100_000_000)
    bid = place_order(buyer, side="buy", price_micro=4_500_000)
    engine.market_match(market_id=market.id)
    bid.refresh_from_db()
    assert bid.status == Order.Status.OPEN
    assert _balance(buyer, Kind.HELD) == bid.hold_micro
    assert ledger_check() == []


def test_a_partial_fill_rests_the_rest(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 100_000_000)
    place_order(seller, side="sell", price_micro=5_000_000, lots=4)
    bid = place_order(buyer, side="buy", price_micro=5_000_000, lots=10)
    engine.market_match(market_id=market.id)
    bid.refresh_from_db()
    assert (bid.status, bid.filled_lots) == (Order.Status.OPEN, 4)
    assert Entitlement.objects.get().tokens_bought == 4_000_000
    assert ledger_check() == []


def test_an_ioc_remainder_expires_and_releases_its_hold(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 100_000_000)
    place_order(seller, side="sell", price_micro=5_000_000, lots=4)
    bid = place_order(buyer, side="buy", price_micro=5_000_000, lots=10, tif="IOC")
    engine.market_match(market_id=market.id)
    bid.refresh_from_db()
    assert (bid.status, bid.filled_lots) == (Order.Status.EXPIRED, 4)
    assert _balance(buyer, Kind.HELD) == 0
    assert _balance(buyer, Kind.ESCROW) == 20_000_000
    assert ledger_check() == []


def test_running_the_engine_twice_changes_nothing_twice(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 100_000_000)
    place_order(seller, side="sell", price_micro=5_000_000)
    place_order(buyer, side="buy", price_micro=5_000_000)
    assert engine.market_match(market_id=market.id) == 2
    assert engine.market_match(market_id=market.id) == 0
    assert Trade.objects.count() == 1
    assert Entitlement.objects.count() == 1
    assert ledger_check() == []


def test_batches_take_their_markets_pending_orders_by_id(market, seller, place_order):
    other = MarketFactory()
    ProviderEndpointFactory(org=seller.org, market=other)
    elsewhere = order_place(
        principal=seller, market_id=other.id, side="sell", price_micro=5_000_000, lots=2
    )
    asks = [place_order(seller, side="sell", price_micro=5_000_000 + i * 10_000) for i in range(5)]
    assert engine.market_match(market_id=market.id, batch_size=2) == 5  # batches of 2, 2 and 1
    sequences = dict(Order.objects.filter(market=market).values_list("id", "sequence"))
    assert [sequences[ask.id] for ask in asks] == [1, 2, 3, 4, 5]
    elsewhere.refresh_from_db()
    assert (elsewhere.status, elsewhere.sequence) == (Order.Status.PENDING, None)


def test_the_book_is_rebuilt_after_a_cancel_outside_the_engine(
    market, seller, buyer, fund, place_order
):
    fund(buyer.org.id, 100_000_000)
    ask = place_order(seller, side="sell", price_micro=5_000_000)
    engine.market_match(market_id=market.id)
    order_cancel(principal=seller, order_id=ask.id)
    place_order(buyer, side="buy", price_micro=5_000_000)
    engine.market_match(market_id=market.id)
    assert not Trade.objects.exists()  # the cancelled ask is gone from the in-memory book too
    assert ledger_check() == []


def test_a_book_rebuilt_from_the_database_matches_like_the_cached_one(
    market, seller, buyer, fund, place_order
):
    fund(buyer.org.id, 100_000_000)
    place_order(seller, side="sell", price_micro=5_100_000, lots=3)
    place_order(seller, side="sell", price_micro=5_000_000, lots=3)
    engine.market_match(market_id=market.id)
    engine._BOOKS.clear()  # as after a worker restart
    place_order(buyer, side="buy", price_micro=5_100_000, lots=5)
    engine.market_match(market_id=market.id)
    prices = list(Trade.objects.order_by("id").values_list("price_micro", "lots"))
    assert prices == [(5_000_000, 3), (5_100_000, 2)]
    assert ledger_check() == []


def test_a_market_buy_never_pays_more_than_it_held(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 200_000_000)
    place_order(seller, side="sell", price_micro=5_500_000, lots=5)
    bid = place_order(buyer, side="buy", type="market", tif="IOC", lots=5)
    engine.market_match(market_id=market.id)
    bid.refresh_from_db()
    assert bid.status == Order.Status.FILLED
    assert _balance(buyer, Kind.HELD) == 0
    assert ledger_check() == []
