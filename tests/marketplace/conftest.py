"""Marketplace fixtures: an open market, a provider with a verified endpoint in it, API clients.

The market (MarketFactory) trades lots of 1M tokens at $4.00-$6.00 per 1M on a $0.01 tick,
2 to 100 lots an order, maker fee 10 bp, taker 25 bp; the seller's verified capacity there is
50 lots over the 10 delivery days.
"""

import pytest

from marketplace.models import Order
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory


@pytest.fixture
def market(db):
    return MarketFactory()


@pytest.fixture
def seller(provider, market):
    ProviderEndpointFactory(org=provider.org, market=market)
    return provider


@pytest.fixture
def buyer_api(api_for, buyer):
    return api_for(buyer)


@pytest.fixture
def seller_api(api_for, seller):
    return api_for(seller)


@pytest.fixture
def make_open(market):
    """Mark an order as the engine would after resting it: open, with the next sequence."""

    def rest(order: Order) -> Order:
        market.refresh_from_db()
        market.last_sequence += 1
        market.save(update_fields=["last_sequence"])
        Order.objects.filter(pk=order.pk).update(
            status=Order.Status.OPEN, sequence=market.last_sequence
        )
        order.refresh_from_db()
        return order

    return rest


@pytest.fixture
def place(market):
    """POST an order to the API: a bid of 10 lots at $5.00 in `market` unless told otherwise."""

    def post(client, headers=None, **fields):
        body = {"market": market.symbol, "side": "buy", "price": "5.000000", "lots": 10}
        body.update(fields)
        body = {key: value for key, value in body.items() if value is not None}
        return client.post("/api/v1/orders", body, format="json", headers=headers or {})

    return post
