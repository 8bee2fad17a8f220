"""The order preview: hold, fee and expected fill against the resting book, and nothing written."""

import pytest

from accounts.principal import Principal
from marketplace.models import Order
from settlement.models import Hold, LedgerEntry
from tests.accounts.factories import MembershipFactory, OrgFactory


@pytest.fixture
def asks(seller, seller_api, place, make_open):
    """The seller's resting asks: 3 lots at $5.00 (first), then 4 at $5.10 and 2 more at $5.00."""
    made = []
    for price, lots in (("5.000000", 3), ("5.100000", 4), ("5.000000", 2)):
        response = place(seller_api, side="sell", price=price, lots=lots)
        assert response.status_code == 201, response.json()
        made.append(make_open(Order.objects.get(pk=response.json()["id"])))
    return made


def preview(client, market, **fields):
    body = {"market": market.symbol, "side": "buy", "price": "5.200000", "lots": 6}
    body.update(fields)
    body = {key: value for key, value in body.items() if value is not None}
    return client.post("/api/v1/orders/preview", body, format="json")


def test_preview_walks_the_book_best_price_first(buyer_api, market, asks):
    response = preview(buyer_api, market, lots=6)

    assert response.status_code == 200, response.json()
    body = response.json()
    # 5 lots at $5.00 (3 + 2), then 1 at $5.10: $30.10 for 6 lots, $5.016666… on average.
    assert body["fill_lots"] == 6
    assert body["fill_notional"] == "30.100000"
    assert body["fill_average_price"] == "5.016666"
    assert body["fee_bp"] == 25
    assert body["fee"] == "0.075250"  # 25 bp of $30.10
    assert body["hold"] == "31.278000"  # 6 lots at the $5.20 limit + 25 bp
    assert body["resting_lots"] == 0
    assert body["reject_reason"] is None


def test_preview_stops_at_the_limit_price_and_rests_the_rest(buyer_api, market, asks):
    body = preview(buyer_api, market, price="5.000000", lots=8).json()

    assert (body["fill_lots"], body["fill_notional"], body["resting_lots"]) == (5, "25.000000", 3)


def test_preview_of_a_fill_or_kill_bigger_than_the_book_fills_nothing(buyer_api, market, asks):
    body = preview(buyer_api, market, tif="FOK", lots=20).json()

    assert (body["fill_lots"], body["fill_notional"], body["fill_average_price"]) == (
        0,
        "0.000000",
        None,
    )


def test_preview_of_a_market_buy_holds_at_the_band_top(buyer_api, market, asks):
    body = preview(buyer_api, market, type="market", price=None, lots=9).json()

    assert body["fill_lots"] == 9
    assert body["hold"] == "54.135000"  # 9 lots at $6.00 + 25 bp


def test_preview_of_a_post_only_order_that_would_take_says_so(buyer_api, market, asks):
    body = preview(buyer_api, market, post_only=True).json()

    assert body["reject_reason"] == "post_only_would_take"
    assert body["fill_lots"] == 0


def test_preview_skips_the_orgs_own_resting_orders_as_the_engine_would(
    seller, market, asks, api_for, place, make_open
):
    # A member of the seller's org bids against the org's own asks: expire_taker trades nothing.
    both = OrgFactory(is_buyer=True, is_provider=True)
    membership = MembershipFactory(org=both)
    client = api_for(Principal.for_membership(membership))
    Order.objects.filter(org=seller.org).update(org=both)

    body = preview(client, market).json()

    assert body["fill_lots"] == 0


def test_preview_changes_nothing(buyer, fund, buyer_api, market, asks):
    fund(buyer.org.id, 1_000_000_000)
    before = (Order.objects.count(), Hold.objects.count(), LedgerEntry.objects.count())
    orders_before = list(Order.objects.values_list("id", "status", "lots", "filled_lots"))

    assert preview(buyer_api, market).status_code == 200

    assert (Order.objects.count(), Hold.objects.count(), LedgerEntry.objects.count()) == before
    assert list(Order.objects.values_list("id", "status", "lots", "filled_lots")) == orders_before


def test_preview_applies_the_order_rules(buyer_api, market):
    response = preview(buyer_api, market, price="5.005000")

    assert (response.status_code, response.json()["error"]["code"]) == (400, "price_off_tick")


def test_preview_ignores_orders_not_on_the_book_yet(buyer_api, market, seller_api, place):
    place(seller_api, side="sell", lots=5)  # pending: the engine has not taken it yet

    assert preview(buyer_api, market).json()["fill_lots"] == 0
