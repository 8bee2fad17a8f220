"""Cancel, cancel all and reduce: the order's state, the book version and the money released."""

import pytest

from marketplace.models import Market, Order
from settlement.models import Hold, LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.marketplace.factories import MarketFactory

Kind = LedgerAccount.Kind
FUNDS = 1_000_000_000


def hold_for(lots: int, price_micro: int = 5_000_000) -> int:
    notional = lots * price_micro  # lots of 1M tokens at a price per 1M
    return notional + -(-notional * 25 // 10_000)


def error_code(response) -> str:
    return response.json()["error"]["code"]


def balances(org_id: int) -> tuple[int, int]:
    return (
        account_balance(org_id=org_id, kind=Kind.AVAILABLE),
        account_balance(org_id=org_id, kind=Kind.HELD),
    )


@pytest.fixture
def funded_buyer(buyer, fund):
    fund(buyer.org.id, FUNDS)
    return buyer


@pytest.fixture
def bid(funded_buyer, buyer_api, place):
    """A pending bid of 10 lots at $5.00."""
    response = place(buyer_api)
    assert response.status_code == 201, response.json()
    return Order.objects.get(pk=response.json()["id"])


def book_version(market) -> int:
    return Market.objects.get(pk=market.pk).book_version


# Cancel


def test_cancelling_a_pending_bid_releases_its_hold(funded_buyer, buyer_api, bid, market):
    response = buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    assert response.status_code == 200, response.json()
    assert response.json()["status"] == "cancelled"
    assert Order.objects.get(pk=bid.pk).status == Order.Status.CANCELLED
    assert balances(funded_buyer.org.id) == (FUNDS, 0)
    assert Hold.objects.get(reference=f"order:{bid.id}").status == Hold.Status.CLOSED
    assert book_version(market) == 0, "a pending order is not on the book"
    assert ledger_check() == []


def test_cancelling_an_open_bid_releases_its_hold_and_bumps_the_book_version(
    funded_buyer, buyer_api, bid, market, make_open
):
    make_open(bid)

    response = buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    assert response.status_code == 200, response.json()
    assert Order.objects.get(pk=bid.pk).status == Order.Status.CANCELLED
    assert balances(funded_buyer.org.id) == (FUNDS, 0)
    assert book_version(market) == 1
    assert ledger_check() == []


def test_cancelling_a_partly_filled_bid_releases_only_what_its_hold_has_left(
    funded_buyer, buyer_api, bid, make_open
):
    make_open(bid)
    hold = Hold.objects.get(reference=f"order:{bid.id}")
    # As if 4 lots had traded: their cost left the hold when the trade settled.
    Hold.objects.filter(pk=hold.pk).update(captured_micro=hold_for(4))
    Order.objects.filter(pk=bid.pk).update(filled_lots=4)

    buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    hold.refresh_from_db()
    assert hold.released_micro == hold_for(10) - hold_for(4)
    assert hold.status == Hold.Status.CLOSED


def test_cancelling_an_ask_works_without_a_hold(seller_api, place):
    ask = place(seller_api, side="sell").json()

    response = seller_api.post(f"/api/v1/orders/{ask['id']}/cancel")

    assert response.status_code == 200
    assert Order.objects.get(pk=ask["id"]).status == Order.Status.CANCELLED


def test_cancelling_twice_is_refused_and_releases_nothing_more(funded_buyer, buyer_api, bid):
    buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    again = buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    assert (again.status_code, error_code(again)) == (409, "order_not_live")
    assert balances(funded_buyer.org.id) == (FUNDS, 0)
    assert ledger_check() == []


@pytest.mark.parametrize("status", [Order.Status.FILLED, Order.Status.EXPIRED])
def test_a_finished_order_cannot_be_cancelled(buyer_api, bid, status):
    Order.objects.filter(pk=bid.pk).update(status=status, sequence=1, filled_lots=bid.lots)

    response = buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    assert (response.status_code, error_code(response)) == (409, "order_not_live")
    assert Order.objects.get(pk=bid.pk).status == status


def test_another_orgs_order_does_not_exist_for_cancel(funded_buyer, bid, seller_api):
    response = seller_api.post(f"/api/v1/orders/{bid.id}/cancel")

    assert (response.status_code, error_code(response)) == (404, "order_not_found")
    assert Order.objects.get(pk=bid.pk).status == Order.Status.PENDING
    assert balances(funded_buyer.org.id) == (FUNDS - hold_for(10), hold_for(10))


def test_another_orgs_order_does_not_exist_for_get(bid, seller_api, buyer_api):
    response = seller_api.get(f"/api/v1/orders/{bid.id}")

    assert (response.status_code, error_code(response)) == (404, "order_not_found")
    assert buyer_api.get(f"/api/v1/orders/{bid.id}").json()["id"] == bid.id


def test_a_halted_market_keeps_its_orders_and_lets_them_be_cancelled(
    funded_buyer, buyer_api, bid, market, make_open, place
):
    make_open(bid)
    Market.objects.filter(pk=market.pk).update(status=Market.Status.HALTED)

    refused = place(buyer_api)

    assert error_code(refused) == "market_halted"
    assert Order.objects.get(pk=bid.pk).status == Order.Status.OPEN
    assert balances(funded_buyer.org.id)[1] == hold_for(10)
    assert buyer_api.post(f"/api/v1/orders/{bid.id}/cancel").status_code == 200
    assert balances(funded_buyer.org.id) == (FUNDS, 0)


# Cancel all


def test_cancel_all_cancels_only_the_orgs_live_orders_in_that_market(
    funded_buyer, buyer, buyer_api, seller_api, market, place, make_open
):
    first = place(buyer_api).json()["id"]
    second = place(buyer_api, price="4.500000").json()["id"]
    make_open(Order.objects.get(pk=second))
    theirs = place(seller_api, side="sell").json()["id"]
    elsewhere_market = MarketFactory()
    elsewhere = place(buyer_api, market=elsewhere_market.symbol).json()["id"]

    response = buyer_api.post("/api/v1/orders/cancel-all", {"market": market.symbol}, format="json")

    assert response.status_code == 200, response.json()
    assert response.json()["cancelled"] == 2
    assert {order["id"] for order in response.json()["orders"]} == {first, second}
    statuses = dict(Order.objects.values_list("id", "status"))
    assert statuses[first] == statuses[second] == Order.Status.CANCELLED
    assert statuses[theirs] == statuses[elsewhere] == Order.Status.PENDING
    assert balances(buyer.org.id)[1] == hold_for(10)  # only the other market's bid
    assert book_version(market) == 1
    assert ledger_check() == []


def test_cancel_all_in_an_unknown_market_is_not_found(buyer_api):
    response = buyer_api.post("/api/v1/orders/cancel-all", {"market": "NOPE-XX"}, format="json")

    assert (response.status_code, error_code(response)) == (404, "market_not_found")


# Reduce


def test_reduce_keeps_the_order_and_its_queue_place_and_releases_part_of_the_hold(
    funded_buyer, buyer_api, bid, make_open
):
    bid = make_open(bid)

    response = buyer_api.post(f"/api/v1/orders/{bid.id}/reduce", {"by_lots": 4}, format="json")

    assert response.status_code == 200, response.json()
    reduced = Order.objects.get(pk=bid.pk)
    assert (reduced.lots, reduced.reduced_lots, reduced.remaining_lots) == (6, 4, 6)
    assert (reduced.status, reduced.sequence) == (Order.Status.OPEN, bid.sequence)
    assert balances(funded_buyer.org.id) == (FUNDS - hold_for(6), hold_for(6))
    assert ledger_check() == []


def test_reducing_an_open_order_bumps_the_book_version(buyer_api, bid, market, make_open):
    make_open(bid)

    buyer_api.post(f"/api/v1/orders/{bid.id}/reduce", {"by_lots": 1}, format="json")

    assert book_version(market) == 1


def test_a_pending_order_can_be_reduced(funded_buyer, buyer_api, bid, market):
    response = buyer_api.post(f"/api/v1/orders/{bid.id}/reduce", {"by_lots": 3}, format="json")

    assert response.json()["lots"] == 7
    assert balances(funded_buyer.org.id)[1] == hold_for(7)
    assert book_version(market) == 0


def test_reducing_a_market_bid_keeps_the_band_top_collateral(funded_buyer, buyer_api, place):
    order = place(buyer_api, type="market", price=None, lots=10).json()

    buyer_api.post(f"/api/v1/orders/{order['id']}/reduce", {"by_lots": 5}, format="json")

    assert balances(funded_buyer.org.id)[1] == hold_for(5, price_micro=6_000_000)
    assert ledger_check() == []


def test_reducing_an_ask_changes_its_lots(seller_api, place):
    ask = place(seller_api, side="sell", lots=10).json()

    response = seller_api.post(f"/api/v1/orders/{ask['id']}/reduce", {"by_lots": 2}, format="json")

    assert response.json()["lots"] == 8


@pytest.mark.parametrize("by_lots", [0, -1, 10, 11])
def test_reduce_by_nothing_or_by_everything_left_is_refused(funded_buyer, buyer_api, bid, by_lots):
    response = buyer_api.post(
        f"/api/v1/orders/{bid.id}/reduce", {"by_lots": by_lots}, format="json"
    )

    assert (response.status_code, error_code(response)) == (400, "invalid_reduce")
    assert Order.objects.get(pk=bid.pk).lots == 10
    assert balances(funded_buyer.org.id)[1] == hold_for(10)


def test_reduce_of_a_cancelled_order_is_refused(buyer_api, bid):
    buyer_api.post(f"/api/v1/orders/{bid.id}/cancel")

    response = buyer_api.post(f"/api/v1/orders/{bid.id}/reduce", {"by_lots": 1}, format="json")

    assert (response.status_code, error_code(response)) == (409, "order_not_live")


def test_another_orgs_order_does_not_exist_for_reduce(bid, seller_api):
    response = seller_api.post(f"/api/v1/orders/{bid.id}/reduce", {"by_lots": 1}, format="json")

    assert (response.status_code, error_code(response)) == (404, "order_not_found")
    assert Order.objects.get(pk=bid.pk).lots == 10


def test_a_reduce_retried_with_its_idempotency_key_reduces_once(funded_buyer, buyer_api, bid):
    headers = {"Idempotency-Key": "reduce-once-1"}
    url = f"/api/v1/orders/{bid.id}/reduce"

    first = buyer_api.post(url, {"by_lots": 3}, format="json", headers=headers)
    retry = buyer_api.post(url, {"by_lots": 3}, format="json", headers=headers)

    assert (first.status_code, retry.status_code) == (200, 200)
    assert first.json()["lots"] == retry.json()["lots"] == 7
    assert balances(funded_buyer.org.id)[1] == hold_for(7)
    assert list(bid.reductions.values_list("by_lots", "lots_after")) == [(3, 7)]


def test_a_reduce_key_reused_with_another_amount_is_refused(funded_buyer, buyer_api, bid):
    headers = {"Idempotency-Key": "reduce-once-2"}
    url = f"/api/v1/orders/{bid.id}/reduce"
    buyer_api.post(url, {"by_lots": 3}, format="json", headers=headers)

    response = buyer_api.post(url, {"by_lots": 2}, format="json", headers=headers)

    assert (response.status_code, error_code(response)) == (409, "idempotency_key_reused")
    assert Order.objects.get(pk=bid.pk).lots == 7


def test_reduces_without_a_key_each_take_lots_off(funded_buyer, buyer_api, bid):
    url = f"/api/v1/orders/{bid.id}/reduce"
    buyer_api.post(url, {"by_lots": 2}, format="json")
    buyer_api.post(url, {"by_lots": 2}, format="json")

    assert Order.objects.get(pk=bid.pk).lots == 6
    assert list(bid.reductions.order_by("id").values_list("lots_after", flat=True)) == [8, 6]
