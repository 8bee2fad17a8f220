"""Provider endpoints (register, verify, suspend) and operators' market status changes."""

import pytest

from marketplace.errors import EndpointStatusUnchanged, MarketStatusUnchanged, StaffOnly
from marketplace.models import Market, Order, ProviderEndpoint
from marketplace.services import (
    endpoint_suspend,
    endpoint_verify,
    market_close,
    market_halt,
    market_resume,
)
from settlement.models import LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.accounts.factories import MembershipFactory, UserFactory
from tests.marketplace.factories import ProviderEndpointFactory

REGISTER = {
    "base_url": "https://inference.example.test/v1",
    "models": ["model-a"],
    "capacity_tokens_per_day": 1_000_000_000,
}


def register(client, market, **fields):
    return client.post(
        "/api/v1/endpoints", {"market": market.symbol, **REGISTER, **fields}, format="json"
    )


def error_code(response) -> str:
    return response.json()["error"]["code"]


# Register


def test_a_provider_registers_an_endpoint_that_waits_for_verification(provider, api_for, market):
    response = register(api_for(provider), market)

    assert response.status_code == 201, response.json()
    endpoint = ProviderEndpoint.objects.get(pk=response.json()["id"])
    assert (endpoint.org_id, endpoint.market_id) == (provider.org.id, market.id)
    assert endpoint.status == ProviderEndpoint.Status.PENDING
    assert endpoint.models == ["model-a"]
    assert response.json()["status"] == "pending"


def test_a_plain_http_url_is_accepted_for_a_local_provider(provider, api_for, market):
    response = register(api_for(provider), market, base_url="http://127.0.0.1:9101/v1/")

    assert response.status_code == 201
    assert response.json()["base_url"] == "http://127.0.0.1:9101/v1"


@pytest.mark.parametrize(
    "base_url",
    ["ftp://files.example.test/v1", "not a url", "https://user:pw@example.test/v1", "https://"],
)
def test_an_endpoint_needs_an_http_url_without_credentials(provider, api_for, market, base_url):
    response = register(api_for(provider), market, base_url=base_url)

    assert (response.status_code, error_code(response)) == (400, "invalid_endpoint")
    assert not ProviderEndpoint.objects.exists()


def test_every_model_must_be_admitted_by_the_tier(provider, api_for, market):
    response = register(api_for(provider), market, models=["model-a", "gpt-2"])

    assert (response.status_code, error_code(response)) == (400, "model_not_admitted")
    assert "gpt-2" in response.json()["error"]["message"]
    assert not ProviderEndpoint.objects.exists()


def test_a_buyer_org_cannot_register_endpoints(buyer_api, market):
    response = register(buyer_api, market)

    assert (response.status_code, error_code(response)) == (403, "not_a_seller")


def test_the_same_url_twice_in_a_market_is_refused(provider, api_for, market):
    client = api_for(provider)
    register(client, market)

    response = register(client, market)

    assert (response.status_code, error_code(response)) == (409, "duplicate_endpoint")


def test_an_endpoint_in_an_unknown_market_is_not_found(provider, api_for, market):
    response = api_for(provider).post(
        "/api/v1/endpoints", {"market": "NOPE-XX", **REGISTER}, format="json"
    )

    assert (response.status_code, error_code(response)) == (404, "market_not_found")


def test_the_endpoint_list_shows_only_the_orgs_endpoints(seller, seller_api, api_for, market):
    other = UserFactory()  # an unrelated provider's endpoint
    ProviderEndpointFactory(org=MembershipFactory(user=other, org__is_provider=True).org)

    body = seller_api.get("/api/v1/endpoints").json()

    assert [row["market"] for row in body] == [market.symbol]


# Verify and suspend


@pytest.fixture
def pending_endpoint(provider, market):
    return ProviderEndpointFactory(
        org=provider.org, market=market, status=ProviderEndpoint.Status.PENDING, verified_at=None
    )


def test_staff_verify_an_endpoint_and_then_it_backs_asks(
    staff, provider, api_for, pending_endpoint, place
):
    client = api_for(provider)
    assert error_code(place(client, side="sell")) == "no_verified_endpoint"

    endpoint = endpoint_verify(actor=staff, endpoint_id=pending_endpoint.id)

    assert endpoint.status == ProviderEndpoint.Status.VERIFIED
    assert (endpoint.verified_by, endpoint.verified_at is not None) == (staff, True)
    assert place(client, side="sell").status_code == 201


def test_only_staff_verify_endpoints(provider, pending_endpoint):
    with pytest.raises(StaffOnly):
        endpoint_verify(actor=provider.user, endpoint_id=pending_endpoint.id)

    assert ProviderEndpoint.objects.get().status == ProviderEndpoint.Status.PENDING


def test_suspending_the_only_endpoint_cancels_every_ask_and_stops_new_ones(
    staff, seller, seller_api, place, make_open
):
    pending = place(seller_api, side="sell").json()["id"]
    resting = make_open(Order.objects.get(pk=place(seller_api, side="sell").json()["id"]))

    endpoint_suspend(actor=staff, endpoint_id=ProviderEndpoint.objects.get().id)

    statuses = set(
        Order.objects.filter(pk__in=[pending, resting.id]).values_list("status", flat=True)
    )
    assert statuses == {Order.Status.CANCELLED}
    assert error_code(place(seller_api, side="sell")) == "no_verified_endpoint"
    ledger_check()


def test_suspending_one_of_two_endpoints_cancels_the_newest_asks_past_what_is_left(
    staff, provider, seller, seller_api, place, market
):
    # Two endpoints of 50 lots each over the window; 8 asks of 10 lots offer 80 of the 100.
    second = ProviderEndpointFactory(org=provider.org, market=market)
    asks = [place(seller_api, side="sell", lots=10).json()["id"] for _ in range(8)]

    endpoint_suspend(actor=staff, endpoint_id=second.id)

    # 50 lots are left: the three newest asks go, the five oldest stay, in time priority.
    status_of = dict(Order.objects.filter(pk__in=asks).values_list("id", "status"))
    assert [status_of[ask] for ask in asks] == [Order.Status.PENDING] * 5 + [
        Order.Status.CANCELLED
    ] * 3
    assert error_code(place(seller_api, side="sell", lots=2)) == "capacity_exceeded"
    ledger_check()


def test_suspending_an_endpoint_with_room_to_spare_cancels_nothing(
    staff, provider, seller, seller_api, place, market
):
    second = ProviderEndpointFactory(org=provider.org, market=market)
    ask = place(seller_api, side="sell", lots=20).json()["id"]

    endpoint_suspend(actor=staff, endpoint_id=second.id)

    assert Order.objects.get(pk=ask).status == Order.Status.PENDING


def test_verifying_a_verified_endpoint_is_refused(staff, seller):
    with pytest.raises(EndpointStatusUnchanged):
        endpoint_verify(actor=staff, endpoint_id=ProviderEndpoint.objects.get().id)


# Market status


def test_halt_and_resume_move_the_market_status(staff, market):
    assert market_halt(actor=staff, market_id=market.id).status == Market.Status.HALTED
    assert market_resume(actor=staff, market_id=market.id).status == Market.Status.OPEN


def test_a_market_is_halted_once(staff, market):
    market_halt(actor=staff, market_id=market.id)

    with pytest.raises(MarketStatusUnchanged):
        market_halt(actor=staff, market_id=market.id)


def test_closing_a_market_cancels_its_live_orders_and_releases_their_holds(
    staff, buyer, fund, buyer_api, place, market, make_open
):
    fund(buyer.org.id, 100_000_000)
    first = place(buyer_api).json()["id"]
    make_open(Order.objects.get(pk=place(buyer_api, price="4.500000").json()["id"]))

    market_close(actor=staff, market_id=market.id)

    assert set(Order.objects.values_list("status", flat=True)) == {Order.Status.CANCELLED}
    assert Order.objects.filter(pk=first).exists()
    assert account_balance(org_id=buyer.org.id, kind=LedgerAccount.Kind.HELD) == 0
    assert account_balance(org_id=buyer.org.id, kind=LedgerAccount.Kind.AVAILABLE) == 100_000_000
    assert ledger_check() == []


def test_a_closed_market_does_not_resume(staff, market):
    market_close(actor=staff, market_id=market.id)

    with pytest.raises(MarketStatusUnchanged):
        market_resume(actor=staff, market_id=market.id)
    assert Market.objects.get(pk=market.pk).status == Market.Status.CLOSED


def test_only_staff_halt_a_market(buyer, market):
    with pytest.raises(StaffOnly):
        market_halt(actor=buyer.user, market_id=market.id)

    assert Market.objects.get(pk=market.pk).status == Market.Status.OPEN
