"""Fixtures for the usage tests: a market, a provider selling in it, a funded buyer, purchases.

The market (MarketFactory) lists at $5.00 per 1M billable tokens, weighs output 6x and cached
input 0.1x, and charges a 10 bp maker fee (the provider's fee on pay-as-you-go). `buy` trades
through the real engine, so the buyer's escrow holds what each entitlement is worth.
"""

from datetime import timedelta

import pytest
from django.utils import timezone

from marketplace import engine
from marketplace.services import order_place
from settlement.models import Entitlement
from settlement.services import UsageInput
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory

BUYER_FUNDS_MICRO = 1_000_000_000


@pytest.fixture(autouse=True)
def _fresh_books():
    engine._BOOKS.clear()
    yield
    engine._BOOKS.clear()


@pytest.fixture
def market(db):
    return MarketFactory()


@pytest.fixture
def seller(provider, market):
    ProviderEndpointFactory(org=provider.org, market=market)
    return provider


def buy_entitlement(
    *, buyer, seller, market, lots: int = 2, price_micro: int = 5_000_000, capture=None
) -> Entitlement:
    """`buyer` buys `lots` lots from `seller` at `price_micro`: an ask, a bid, the engine."""
    order_place(
        principal=seller, market_id=market.id, side="sell", price_micro=price_micro, lots=lots
    )
    order_place(
        principal=buyer, market_id=market.id, side="buy", price_micro=price_micro, lots=lots
    )
    engine.market_match(market_id=market.id)
    return Entitlement.objects.filter(buyer_org_id=buyer.org.id).latest("id")


@pytest.fixture
def buy(buyer, seller, market, fund, django_capture_on_commit_callbacks):
    """Buy an entitlement for `buyer` from `seller` (the buyer is funded on first use)."""
    funded = []

    def purchase(lots: int = 2, price_micro: int = 5_000_000, **contract) -> Entitlement:
        if not funded:
            fund(buyer.org.id, BUYER_FUNDS_MICRO)
            funded.append(True)
        with django_capture_on_commit_callbacks(execute=False):
            entitlement = buy_entitlement(
                buyer=buyer, seller=seller, market=market, lots=lots, price_micro=price_micro
            )
        if contract:
            Entitlement.objects.filter(pk=entitlement.pk).update(**contract)
            entitlement.refresh_from_db()
        return entitlement

    return purchase


_serial = iter(range(1, 10**9))


def usage(in_market, to_org, **fields) -> UsageInput:
    """A record of 1,000 input and 100 output tokens (1,600 billable) that just ended."""
    now = timezone.now()
    values = {
        "request_id": f"req-{next(_serial)}",
        "market": in_market.symbol,
        "counterparty": to_org.slug,
        "model": "model-a",
        "input_tokens": 1_000,
        "cached_input_tokens": 0,
        "output_tokens": 100,
        "started_at": now - timedelta(seconds=2),
        "ended_at": now,
    }
    values.update(fields)
    return UsageInput(**values)
