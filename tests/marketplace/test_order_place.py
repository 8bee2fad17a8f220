"""Placing orders through the API: every rule, its error code, and the money it sets aside."""

import pytest
from celery.app.task import Task

from marketplace import engine
from marketplace.errors import CapacityExceeded
from marketplace.models import Market, Order, ProviderEndpoint
from marketplace.services import order_place
from marketplace.tasks import match_queue_for
from settlement.models import Hold, LedgerAccount, LedgerEntry
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory

Kind = LedgerAccount.Kind
FUNDS = 1_000_000_000  # $1,000

# 10 lots of 1M tokens at $5.00 per 1M, plus the higher fee (25 bp), rounded up.
BID_10_AT_5_HOLD = 10 * 5_000_000 + (10 * 5_000_000 * 25 + 9_999) // 10_000


def error_code(response) -> str:
    return response.json()["error"]["code"]


def held(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.HELD)


def available(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.AVAILABLE)


@pytest.fixture
def funded_buyer(buyer, fund):
    fund(buyer.org.id, FUNDS)
    return buyer


# What a valid order sets aside


def test_a_bid_holds_lots_times_price_plus_the_higher_fee(funded_buyer, buyer_api, place):
    response = place(buyer_api)

    assert response.status_code == 201, response.json()
    order = Order.objects.get(pk=response.json()["id"])
    assert BID_10_AT_5_HOLD == 50_125_000
    assert order.hold_micro == BID_10_AT_5_HOLD
    assert response.json()["hold"] == "50.125000"
    assert held(funded_buyer.org.id) == BID_10_AT_5_HOLD
    assert available(funded_buyer.org.id) == FUNDS - BID_10_AT_5_HOLD
    assert ledger_check() == []


def test_a_bid_is_inserted_pending_with_its_hold_named_after_it(funded_buyer, buyer_api, place):
    body = place(buyer_api).json()

    assert body["status"] == "pending"
    assert body["sequence"] is None
    hold = Hold.objects.get(reference=f"order:{body['id']}")
    assert (hold.org_id, hold.amount_micro) == (funded_buyer.org.id, BID_10_AT_5_HOLD)


def test_the_fee_part_of_a_hold_is_rounded_up(funded_buyer, buyer_api, market, place):
    # A $0.001 tick and a 33 bp fee make a fee with a fraction of a micro-USD.
    Market.objects.filter(pk=market.pk).update(tick_micro=1_000, taker_fee_bp=33)
    body = place(buyer_api, price="4.001000", lots=3).json()

    notional = 3 * 4_001_000
    assert notional * 33 % 10_000 != 0, "the example must need rounding"
    fee_rounded_up = notional * 33 // 10_000 + 1
    assert Order.objects.get(pk=body["id"]).hold_micro == notional + fee_rounded_up


def test_a_market_buy_is_held_at_the_top_of_the_band(funded_buyer, buyer_api, place):
    response = place(buyer_api, type="market", price=None, lots=10)

    assert response.status_code == 201, response.json()
    body = response.json()
    assert (body["type"], body["tif"], body["price"]) == ("market", "IOC", None)
    at_band_top = 10 * 6_000_000 + 10 * 6_000_000 * 25 // 10_000
    assert Order.objects.get(pk=body["id"]).hold_micro == at_band_top
    assert held(funded_buyer.org.id) == at_band_top
    assert ledger_check() == []


def test_an_ask_holds_no_money(seller, seller_api, place):
    response = place(seller_api, side="sell", lots=10)

    assert response.status_code == 201, response.json()
    assert response.json()["hold"] == "0.000000"
    assert not Hold.objects.exists()


def test_prices_on_the_band_edges_are_accepted(funded_buyer, buyer_api, place):
    assert place(buyer_api, price="4.000000").status_code == 201
    assert place(buyer_api, price="6.000000").status_code == 201


# Each rule that refuses an order, through the API, and that a refusal writes nothing


@pytest.mark.parametrize(
    ("fields", "status", "code"),
    [
        ({"market": "NOPE-XX"}, 404, "market_not_found"),
        ({"price": "5.005000"}, 400, "price_off_tick"),
        ({"price": "6.010000"}, 400, "price_outside_band"),
        ({"price": "3.990000"}, 400, "price_outside_band"),
        ({"lots": 1}, 400, "lots_below_min"),
        ({"lots": 0}, 400, "lots_below_min"),
        ({"lots": 101}, 400, "lots_above_max"),
        ({"price": None}, 400, "invalid_order"),
        ({"type": "market"}, 400, "invalid_order"),
        ({"type": "market", "price": None, "tif": "GTC"}, 400, "invalid_order"),
        ({"post_only": True, "tif": "IOC"}, 400, "invalid_order"),
        ({"type": "market", "price": None, "post_only": True}, 400, "post_only_market_order"),
        ({"side": "sell"}, 403, "not_a_seller"),
        ({"lots": 50}, 402, "insufficient_funds"),
    ],
)
def test_a_refused_bid_has_its_code_and_writes_nothing(
    buyer, fund, buyer_api, place, fields, status, code
):
    fund(buyer.org.id, 200_000_000)  # $200 covers 10 lots at $5 but not 50
    entries_before = LedgerEntry.objects.count()

    response = place(buyer_api, **fields)

    assert (response.status_code, error_code(response)) == (status, code), response.json()
    assert not Order.objects.exists()
    assert not Hold.objects.exists()
    assert LedgerEntry.objects.count() == entries_before
    assert available(buyer.org.id) == 200_000_000


def test_a_halted_market_refuses_new_orders(funded_buyer, buyer_api, market, place):
    Market.objects.filter(pk=market.pk).update(status=Market.Status.HALTED)

    response = place(buyer_api)

    assert (response.status_code, error_code(response)) == (409, "market_halted")
    assert not Order.objects.exists()


def test_a_closed_market_refuses_new_orders(funded_buyer, buyer_api, market, place):
    Market.objects.filter(pk=market.pk).update(status=Market.Status.CLOSED)

    response = place(buyer_api)

    assert (response.status_code, error_code(response)) == (409, "market_closed")


def test_an_org_that_is_not_a_buyer_cannot_bid(seller, seller_api, place):
    response = place(seller_api, side="buy")

    assert (response.status_code, error_code(response)) == (403, "not_a_buyer")
    assert not Order.objects.exists()


def test_an_ask_needs_a_verified_endpoint(provider, api_for, market, place):
    ProviderEndpointFactory(
        org=provider.org, market=market, status=ProviderEndpoint.Status.PENDING, verified_at=None
    )

    response = place(api_for(provider), side="sell")

    assert (response.status_code, error_code(response)) == (403, "no_verified_endpoint")
    assert not Order.objects.exists()


def test_an_endpoint_in_another_market_does_not_back_an_ask(provider, api_for, place):
    ProviderEndpointFactory(org=provider.org, market=MarketFactory())

    response = place(api_for(provider), side="sell")

    assert error_code(response) == "no_verified_endpoint"


def test_a_suspended_endpoint_no_longer_backs_asks(seller, seller_api, place):
    ProviderEndpoint.objects.update(status=ProviderEndpoint.Status.SUSPENDED)

    response = place(seller_api, side="sell")

    assert error_code(response) == "no_verified_endpoint"


# Capacity: open asks + sold undelivered + this ask <= capacity/day x delivery days (50 lots here)


def test_asks_up_to_the_capacity_over_the_delivery_window_are_accepted(seller_api, place):
    assert place(seller_api, side="sell", lots=30).status_code == 201
    assert place(seller_api, side="sell", lots=20).status_code == 201
    assert Order.objects.filter(side="sell").count() == 2


def test_an_ask_past_the_capacity_is_refused(seller_api, place):
    place(seller_api, side="sell", lots=30)

    response = place(seller_api, side="sell", lots=21)

    assert (response.status_code, error_code(response)) == (409, "capacity_exceeded")
    assert response.json()["error"]["fields"]["lots"] == ["At most 20 more lots."]
    assert Order.objects.filter(side="sell").count() == 1


def test_capacity_sums_the_verified_endpoints(seller, seller_api, market, place):
    ProviderEndpointFactory(org=seller.org, market=market)  # another 50 lots over the window

    assert place(seller_api, side="sell", lots=90).status_code == 201
    assert error_code(place(seller_api, side="sell", lots=11)) == "capacity_exceeded"


def test_filled_and_cancelled_asks_free_their_capacity(seller_api, place):
    first = place(seller_api, side="sell", lots=50).json()
    Order.objects.filter(pk=first["id"]).update(status=Order.Status.CANCELLED)

    assert place(seller_api, side="sell", lots=50).status_code == 201


def test_only_the_unfilled_part_of_an_open_ask_counts(seller_api, place, make_open):
    first = Order.objects.get(pk=place(seller_api, side="sell", lots=50).json()["id"])
    make_open(first)
    Order.objects.filter(pk=first.pk).update(filled_lots=40)

    # 10 lots still offered: 40 more fit (the sold 40 are counted through entitlements).
    assert place(seller_api, side="sell", lots=40).status_code == 201


def test_sold_tokens_not_yet_delivered_count_against_capacity(
    seller, buyer, fund, market, django_capture_on_commit_callbacks
):
    fund(buyer.org.id, FUNDS)
    engine._BOOKS.clear()

    def place_now(principal, side: str, lots: int) -> Order:
        with django_capture_on_commit_callbacks(execute=False):
            return order_place(
                principal=principal,
                market_id=market.id,
                side=side,
                price_micro=5_000_000,
                lots=lots,
            )

    place_now(seller, "sell", 30)
    place_now(buyer, "buy", 30)
    engine.market_match(market_id=market.id)
    engine._BOOKS.clear()
    assert not Order.objects.filter(status__in=["pending", "open"]).exists(), "all 30 sold"

    with pytest.raises(CapacityExceeded):
        place_now(seller, "sell", 21)
    assert place_now(seller, "sell", 20).status == Order.Status.PENDING


# Identity: client order ids and Idempotency-Key


def test_a_client_order_id_is_unique_within_an_org(funded_buyer, buyer_api, place):
    assert place(buyer_api, client_order_id="bot-1").status_code == 201

    response = place(buyer_api, client_order_id="bot-1", price="5.100000")

    assert (response.status_code, error_code(response)) == (409, "duplicate_client_order_id")
    assert Order.objects.count() == 1
    assert held(funded_buyer.org.id) == BID_10_AT_5_HOLD


def test_another_org_may_use_the_same_client_order_id(funded_buyer, buyer_api, seller_api, place):
    assert place(buyer_api, client_order_id="bot-1").status_code == 201
    assert place(seller_api, side="sell", client_order_id="bot-1").status_code == 201


def test_the_same_idempotency_key_returns_the_first_order_and_holds_once(
    funded_buyer, buyer_api, place
):
    headers = {"Idempotency-Key": "order-0001"}
    first = place(buyer_api, headers=headers)
    again = place(buyer_api, headers=headers)

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert Order.objects.count() == 1
    assert Hold.objects.count() == 1
    assert held(funded_buyer.org.id) == BID_10_AT_5_HOLD
    assert ledger_check() == []


def test_the_same_idempotency_key_with_another_order_is_refused(funded_buyer, buyer_api, place):
    headers = {"Idempotency-Key": "order-0001"}
    place(buyer_api, headers=headers)

    response = place(buyer_api, headers=headers, lots=11)

    assert (response.status_code, error_code(response)) == (409, "idempotency_key_reused")
    assert Order.objects.count() == 1
    assert held(funded_buyer.org.id) == BID_10_AT_5_HOLD


def test_a_retry_is_answered_with_the_first_order_after_the_market_halted(
    funded_buyer, buyer_api, market, place
):
    headers = {"Idempotency-Key": "order-0001"}
    first = place(buyer_api, headers=headers)
    market.status = Market.Status.HALTED
    market.save(update_fields=["status"])

    again = place(buyer_api, headers=headers)
    other = place(buyer_api, headers={"Idempotency-Key": "order-0002"})

    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json()["id"] == first.json()["id"]
    assert (other.status_code, error_code(other)) == (409, "market_halted")
    assert Order.objects.count() == 1
    assert held(funded_buyer.org.id) == BID_10_AT_5_HOLD


def test_a_used_key_with_an_order_the_rules_refuse_is_still_a_reused_key(
    funded_buyer, buyer_api, place
):
    headers = {"Idempotency-Key": "order-0001"}
    place(buyer_api, headers=headers)

    response = place(buyer_api, headers=headers, price="500.000000")  # outside the band

    assert (response.status_code, error_code(response)) == (409, "idempotency_key_reused")
    assert Order.objects.count() == 1


def test_an_idempotency_key_is_per_org(funded_buyer, buyer_api, seller_api, place):
    headers = {"Idempotency-Key": "order-0001"}
    mine = place(buyer_api, headers=headers).json()
    theirs = place(seller_api, headers=headers, side="sell").json()

    assert mine["id"] != theirs["id"]


def test_placing_needs_the_trade_scope(funded_buyer, api_for, place):
    response = place(api_for(funded_buyer, scopes=["read"]))

    assert response.status_code == 403
    assert not Order.objects.exists()


# The match task


def test_the_match_task_is_queued_after_commit_to_the_market_shard(
    funded_buyer,
    buyer_api,
    market,
    place,
    django_capture_on_commit_callbacks,
    settings,
    monkeypatch,
):
    settings.MATCH_QUEUE_SHARDS = 4
    sent = []
    monkeypatch.setattr(
        Task,
        "apply_async",
        lambda self, args=None, kwargs=None, **options: sent.append(
            (self.name, args, options.get("queue"))
        ),
    )

    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = place(buyer_api)

    assert response.status_code == 201
    assert len(callbacks) == 1
    assert sent == [], "nothing is sent before the transaction commits"
    callbacks[0]()
    assert sent == [("marketplace.tasks.market_match_task", (market.id,), f"match-{market.id % 4}")]


def test_a_refused_order_queues_no_match(
    buyer, buyer_api, place, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        response = place(buyer_api)  # no funds

    assert error_code(response) == "insufficient_funds"
    assert callbacks == []


@pytest.mark.parametrize(("shards", "market_id", "queue"), [(1, 7, "match-0"), (4, 7, "match-3")])
def test_markets_are_spread_over_the_shard_queues(settings, shards, market_id, queue):
    settings.MATCH_QUEUE_SHARDS = shards

    assert match_queue_for(market_id) == queue
