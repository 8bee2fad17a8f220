"""The public market list and contract spec, and the org's order list with its filters."""

from rest_framework.test import APIClient

from marketplace.models import Order
from tests.marketplace.factories import MarketFactory


def test_markets_are_public(market):
    response = APIClient().get("/api/v1/markets")

    assert response.status_code == 200
    assert [row["symbol"] for row in response.json()] == [market.symbol]


def test_a_market_shows_its_contract_with_prices_as_decimal_strings(market):
    body = APIClient().get(f"/api/v1/markets/{market.symbol}").json()

    assert body["symbol"] == market.symbol
    assert body["lot_tokens"] == 1_000_000
    assert body["tick"] == "0.010000"
    assert body["reference_price"] == "5.000000"
    assert (body["band_low"], body["band_high"]) == ("4.000000", "6.000000")
    assert (body["min_lots"], body["max_lots"]) == (2, 100)
    assert (body["maker_fee_bp"], body["taker_fee_bp"]) == (10, 25)
    assert (body["output_weight_bp"], body["cache_weight_bp"]) == (60_000, 1_000)
    assert (body["delivery_days"], body["expiry_policy"], body["status"]) == (10, "refund", "open")
    assert body["tier"]["admitted_models"] == ["model-a", "model-b"]
    assert body["region"]["code"] == market.region.code


def test_a_market_symbol_is_case_insensitive(market):
    assert APIClient().get(f"/api/v1/markets/{market.symbol.lower()}").status_code == 200


def test_an_unknown_market_is_not_found(db):
    response = APIClient().get("/api/v1/markets/NOPE-XX")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "market_not_found"


def test_the_band_is_cut_to_the_tick_grid(db):
    # 7 % of $5.00 is $0.35; with a $0.10 tick the band keeps the 3 whole ticks inside it.
    market = MarketFactory(tick_micro=100_000, band_bp=700)

    assert (market.band_low_micro, market.band_high_micro) == (4_700_000, 5_300_000)


def test_the_band_never_reaches_zero(db):
    market = MarketFactory(band_bp=10_000)

    assert market.band_low_micro == market.tick_micro


# The org's orders


def test_the_order_list_shows_only_the_orgs_orders_newest_first(
    buyer, fund, buyer_api, seller_api, place
):
    fund(buyer.org.id, 1_000_000_000)
    first = place(buyer_api).json()["id"]
    second = place(buyer_api, price="4.500000").json()["id"]
    place(seller_api, side="sell")

    body = buyer_api.get("/api/v1/orders").json()

    assert [row["id"] for row in body["results"]] == [second, first]


def test_the_order_list_filters_by_market_status_side_and_client_order_id(
    buyer, fund, buyer_api, place
):
    fund(buyer.org.id, 1_000_000_000)
    other_market = MarketFactory()
    a = place(buyer_api, client_order_id="a").json()["id"]
    b = place(buyer_api, market=other_market.symbol, client_order_id="b").json()["id"]
    Order.objects.filter(pk=b).update(status=Order.Status.CANCELLED)

    def ids(query: str) -> list[int]:
        response = buyer_api.get(f"/api/v1/orders?{query}")
        assert response.status_code == 200, response.json()
        return [row["id"] for row in response.json()["results"]]

    assert ids(f"market={other_market.symbol}") == [b]
    assert ids("status=pending") == [a]
    assert ids("side=sell") == []
    assert ids("client_order_id=a") == [a]


def test_an_unknown_status_filter_is_a_bad_request(buyer_api):
    response = buyer_api.get("/api/v1/orders?status=lost")

    assert response.status_code == 400
    assert "status" in response.json()["error"]["fields"]
