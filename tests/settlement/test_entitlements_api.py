"""The entitlement list: what an org bought, or as a provider sold, and only that."""

import pytest
from rest_framework.test import APIClient

from accounts.principal import Principal
from marketplace import engine
from marketplace.services import order_place
from settlement.models import Entitlement
from settlement.selectors import entitlement_list
from tests.accounts.factories import MembershipFactory
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _fresh_books():
    engine._BOOKS.clear()
    yield
    engine._BOOKS.clear()


@pytest.fixture
def market(db):
    return MarketFactory()


@pytest.fixture
def other_market(db):
    return MarketFactory()


@pytest.fixture
def seller(provider, market, other_market):
    ProviderEndpointFactory(org=provider.org, market=market)
    ProviderEndpointFactory(org=provider.org, market=other_market)
    return provider


@pytest.fixture
def second_buyer(db, fund) -> Principal:
    principal = Principal.for_membership(MembershipFactory(org__name="Second Buyer"))
    fund(principal.org.id, 1_000_000_000)
    return principal


@pytest.fixture
def buy(seller, django_capture_on_commit_callbacks):
    """`buyer` buys `lots` from the seller in `market`: an ask, a bid, a run of the engine."""

    def trade(buyer, market, lots: int, price_micro: int = 5_000_000) -> Entitlement:
        with django_capture_on_commit_callbacks(execute=False):
            order_place(
                principal=seller,
                market_id=market.id,
                side="sell",
                price_micro=price_micro,
                lots=lots,
            )
            order_place(
                principal=buyer, market_id=market.id, side="buy", price_micro=price_micro, lots=lots
            )
        engine.market_match(market_id=market.id)
        return Entitlement.objects.filter(buyer_org_id=buyer.org.id).latest("id")

    return trade


@pytest.fixture
def bought(buyer, second_buyer, fund, market, other_market, buy):
    """The buyer's two entitlements (one per market) and the second buyer's one."""
    fund(buyer.org.id, 1_000_000_000)
    mine_here = buy(buyer, market, 4)
    mine_there = buy(buyer, other_market, 2, price_micro=4_500_000)
    theirs = buy(second_buyer, market, 3)
    return mine_here, mine_there, theirs


def _ids(client, **query) -> list[int]:
    response = client.get("/api/v1/entitlements", query)
    assert response.status_code == 200, response.json()
    return [row["id"] for row in response.json()["results"]]


def test_a_buyer_sees_only_what_it_bought(bought, buyer, second_buyer, api_for):
    mine_here, mine_there, theirs = bought

    assert _ids(api_for(buyer)) == [mine_there.id, mine_here.id]
    assert _ids(api_for(second_buyer)) == [theirs.id]


def test_an_entitlement_shows_its_contract_and_its_use(bought, buyer, seller, market, api_for):
    mine_here, _, _ = bought
    Entitlement.objects.filter(pk=mine_here.pk).update(
        tokens_used=1_500_000, charged_micro=7_500_000
    )

    row = api_for(buyer).get("/api/v1/entitlements", {"market": market.symbol}).json()["results"][0]

    assert row["id"] == mine_here.id
    assert (row["market"], row["trade_id"], row["status"]) == (
        market.symbol,
        mine_here.trade_id,
        "open",
    )
    assert (row["buyer_org_id"], row["provider_org_id"]) == (buyer.org.id, seller.org.id)
    assert (row["tokens_bought"], row["tokens_used"], row["tokens_left"]) == (
        4_000_000,
        1_500_000,
        2_500_000,
    )
    assert (row["price"], row["value"], row["charged"], row["escrow_left"]) == (
        "5.000000",
        "20.000000",
        "7.500000",
        "12.500000",
    )
    assert (row["output_weight_bp"], row["provider_fee_bp"], row["expiry_policy"]) == (
        market.output_weight_bp,
        market.maker_fee_bp,
        "refund",
    )
    assert row["closed_at"] is None


def test_a_provider_lists_what_it_sold_with_role_provider(bought, seller, buyer, api_for):
    mine_here, mine_there, theirs = bought

    assert _ids(api_for(seller), role="provider") == [theirs.id, mine_there.id, mine_here.id]
    assert _ids(api_for(seller)) == []  # it bought nothing
    assert _ids(api_for(buyer), role="provider") == []  # it sold nothing


def test_the_list_filters_by_market_and_status(bought, buyer, seller, other_market, api_for):
    mine_here, mine_there, theirs = bought
    Entitlement.objects.filter(pk=mine_here.pk).update(status=Entitlement.Status.EXPIRED)

    assert _ids(api_for(buyer), market=other_market.symbol.lower()) == [mine_there.id]
    assert _ids(api_for(buyer), status="expired") == [mine_here.id]
    assert _ids(api_for(buyer), status="open") == [mine_there.id]
    assert _ids(api_for(seller), role="provider", status="open") == [theirs.id, mine_there.id]
    assert _ids(api_for(buyer), market="NOPE-XX") == []


def test_the_list_comes_in_pages(bought, seller, api_for):
    client = api_for(seller)
    first = client.get("/api/v1/entitlements", {"role": "provider", "page_size": 2}).json()
    second = client.get(first["next"]).json()

    assert len(first["results"]) == 2
    assert len(second["results"]) == 1
    assert second["next"] is None


def test_the_selector_scopes_by_org_and_role(bought, buyer, seller, market):
    mine_here, _, theirs = bought

    assert list(entitlement_list(org_id=buyer.org.id, market_id=market.id)) == [mine_here]
    assert list(entitlement_list(org_id=seller.org.id, role="provider", market_id=market.id)) == [
        theirs,
        mine_here,
    ]


@pytest.mark.parametrize(
    ("query", "field"),
    [({"role": "admin"}, "role"), ({"status": "lost"}, "status"), ({"cursor": "zzz"}, "cursor")],
)
def test_a_bad_filter_is_a_400_with_the_field(buyer, api_for, query, field):
    response = api_for(buyer).get("/api/v1/entitlements", query)

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert field in response.json()["error"]["fields"]


def test_the_list_needs_a_key_with_read_scope(buyer, api_for):
    assert APIClient().get("/api/v1/entitlements").status_code == 401
    response = api_for(buyer, scopes=["trade"]).get("/api/v1/entitlements")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
