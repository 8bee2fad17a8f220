"""The invariants the database itself enforces on markets, orders and trades."""

import pytest
from django.db import IntegrityError, transaction

from marketplace.models import Order, Trade
from tests.marketplace.factories import MarketFactory


def refused(make) -> bool:
    try:
        with transaction.atomic():
            make()
    except IntegrityError:
        return True
    return False


@pytest.mark.parametrize(
    "fields",
    [
        {"lot_tokens": 0},
        {"tick_micro": 0},
        {"min_lots": 5, "max_lots": 4},
        {"lot_tokens": 1_000, "tick_micro": 100},  # a lot per tick is 0.1 micro-USD
        {"reference_price_micro": 5_005_000},  # off the $0.01 tick
        {"band_bp": 0},
        {"taker_fee_bp": 10_000},
        {"status": "paused"},
    ],
)
def test_a_market_breaking_its_contract_rules_is_refused(db, fields):
    assert refused(lambda: MarketFactory(**fields))


def test_a_market_whose_lot_notional_is_whole_micro_usd_is_accepted(db):
    # 1,000 tokens x $0.001 per 1M = 1 micro-USD per lot per tick.
    assert not refused(lambda: MarketFactory(lot_tokens=1_000, tick_micro=1_000))


def test_one_market_per_tier_and_region(db):
    market = MarketFactory()

    assert refused(lambda: MarketFactory(tier=market.tier, region=market.region))


@pytest.fixture
def order_fields(buyer, market):
    return {
        "org": buyer.org,
        "market": market,
        "side": "buy",
        "type": "limit",
        "tif": "GTC",
        "price_micro": 5_000_000,
        "lots": 10,
    }


@pytest.mark.parametrize(
    "changes",
    [
        {"lots": 0},
        {"filled_lots": 11},
        {"price_micro": None},
        {"type": "market"},  # with a price
        {"type": "market", "price_micro": None, "tif": "GTC"},
        {"type": "market", "price_micro": None, "tif": "IOC", "post_only": True},
        {"post_only": True, "tif": "IOC"},
        {"side": "sell", "hold_micro": 1},
        {"status": "filled", "sequence": 1},  # filled with lots left
        {"status": "open"},  # processed without a sequence
        {"stp": "sometimes"},
    ],
)
def test_an_order_breaking_its_shape_rules_is_refused(order_fields, changes):
    assert refused(lambda: Order.objects.create(**{**order_fields, **changes}))


def test_a_valid_order_is_accepted(order_fields):
    assert not refused(lambda: Order.objects.create(**order_fields))


def test_client_order_ids_and_idempotency_keys_are_unique_per_org(order_fields):
    Order.objects.create(**order_fields, client_order_id="c1", idempotency_key="k1")

    assert refused(lambda: Order.objects.create(**order_fields, client_order_id="c1"))
    assert refused(lambda: Order.objects.create(**order_fields, idempotency_key="k1"))
    assert not refused(lambda: Order.objects.create(**order_fields))  # none given: no clash


def test_a_sequence_is_unique_within_a_market(order_fields):
    Order.objects.create(**order_fields, status="open", sequence=1)

    assert refused(lambda: Order.objects.create(**order_fields, status="open", sequence=1))
    other_market = MarketFactory()
    assert not refused(
        lambda: Order.objects.create(
            **{**order_fields, "market": other_market}, status="open", sequence=1
        )
    )


def test_two_orders_trade_with_each_other_once(order_fields, provider, market):
    taker = Order.objects.create(**order_fields, status="filled", sequence=2, filled_lots=10)
    maker = Order.objects.create(
        **{**order_fields, "org": provider.org, "side": "sell"},
        status="filled",
        sequence=1,
        filled_lots=10,
    )

    def trade():
        return Trade.objects.create(
            market=market,
            taker_order=taker,
            maker_order=maker,
            buyer_org=taker.org,
            seller_org=maker.org,
            price_micro=5_000_000,
            lots=10,
            tokens=10_000_000,
            notional_micro=50_000_000,
            sequence=2,
        )

    assert not refused(trade)
    assert refused(trade)
