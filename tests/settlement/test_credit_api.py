"""GET /api/v1/credit: what a buyer can still draw from the calling provider, in billable tokens."""

from datetime import timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.models import Scope
from marketplace import engine
from marketplace.models import Trade
from marketplace.services import order_place
from settlement.models import LedgerAccount
from settlement.selectors import account_balance, reference_price_get
from settlement.services import (
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
    usage_ingest,
)
from tests.accounts.factories import MembershipFactory
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)


def _credit(client, **query):
    return client.get("/api/v1/credit", query)


def test_credit_is_the_entitlements_left_plus_what_the_balance_covers(
    seller, buyer, market, buy, api_for
):
    buy(lots=2)
    usage_ingest(principal=seller, records=[usage(market, buyer.org)])
    available = account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE)

    response = _credit(
        api_for(seller, scopes=[Scope.READ]), buyer=buyer.org.slug, market=market.symbol
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    payg_tokens = available * 1_000_000 // 5_000_000
    assert body == {
        "buyer": buyer.org.slug,
        "market": market.symbol,
        "billable_tokens": 2_000_000 - 1_600 + payg_tokens,
        "entitlement_tokens": 2_000_000 - 1_600,
        "payg_tokens": payg_tokens,
        "reference_price": "5.000000",
        "reference_price_rule": "vwap_24h",
        "unfunded_tokens": 0,
        "unfunded": "0.000000",
    }


def test_expired_entitlements_do_not_count(seller, buyer, market, buy, api_for):
    buy(lots=2, expires_at=timezone.now() - timedelta(seconds=1))
    body = _credit(api_for(seller), buyer=buyer.org.slug, market=market.symbol).json()
    assert body["entitlement_tokens"] == 0


def test_the_reference_price_is_the_vwap_else_the_best_ask_else_the_list_price(
    seller, buyer, market, buy, django_capture_on_commit_callbacks
):
    buy(lots=2, price_micro=5_200_000)
    buy(lots=6, price_micro=4_800_000)
    vwap = reference_price_get(market=market)
    assert (vwap.rule, vwap.price_micro) == ("vwap_24h", (2 * 5_200_000 + 6 * 4_800_000) // 8)

    Trade.objects.filter(market=market).update(created_at=timezone.now() - timedelta(hours=25))
    assert reference_price_get(market=market).rule == "list"
    assert reference_price_get(market=market).price_micro == market.reference_price_micro

    with django_capture_on_commit_callbacks(execute=False):
        order_place(
            principal=seller, market_id=market.id, side="sell", price_micro=5_500_000, lots=2
        )
    engine.market_match(market_id=market.id)
    best_ask = reference_price_get(market=market)
    assert (best_ask.rule, best_ask.price_micro) == ("best_ask", 5_500_000)


def test_unfunded_usage_is_shown_to_the_provider(seller, buyer, market, buy, api_for):
    buy(lots=2)
    with transaction.atomic():
        ledger_post(
            kind="transfer",
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.STRIPE_CLEARING),
                account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE),
            ),
            reference="spent-elsewhere",
        )
    usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, input_tokens=2_010_000, output_tokens=0)],
    )

    body = _credit(api_for(seller), buyer=buyer.org.slug, market=market.symbol).json()

    assert (body["billable_tokens"], body["payg_tokens"]) == (0, 0)
    assert (body["unfunded_tokens"], body["unfunded"]) == (10_000, "0.050000")
    assert ledger_check() == []


def test_only_a_provider_may_ask(buyer, market, api_for):
    response = _credit(api_for(buyer), buyer=buyer.org.slug, market=market.symbol)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "not_a_provider"


def test_buyers_without_entitlements_from_the_provider_are_not_found(
    seller, buyer, market, buy, api_for
):
    buy(lots=2)
    stranger = MembershipFactory(org__name="Stranger").org
    client = api_for(seller)

    for slug in (stranger.slug, "no-such-org"):
        response = _credit(client, buyer=slug, market=market.symbol)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "buyer_not_found"
    unknown = _credit(client, buyer=buyer.org.slug, market="NOPE-EU")
    assert (unknown.status_code, unknown.json()["error"]["code"]) == (404, "market_not_found")
    missing = _credit(client, buyer=buyer.org.slug)
    assert missing.status_code == 400
    assert "market" in missing.json()["error"]["fields"]
