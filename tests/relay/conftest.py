"""Relay fixtures: a relay and fake providers on free local ports, a market, keys and money.

The relay runs in threads of the test process with its own database connections, so these tests
use `transactional_db`: what a test writes is committed and the relay sees it.

The market trades "model-a" at a $5.00 reference price per 1M billable tokens, output weighted
6x (60,000 bp), maker fee 10 bp; its tier caps a completion at 16,384 tokens.
"""

import contextlib
from dataclasses import dataclass

import openai
import pytest

from accounts.models import Role
from accounts.principal import Principal
from accounts.services import api_key_create
from marketplace import engine
from marketplace.models import ProviderEndpoint
from marketplace.services import order_place
from relay import health
from relay.captures import captures_discard
from relay.fake_provider import FakeProvider, FakeProviderConfig
from relay.gateway import RelayApp
from relay.services import relay_caches_clear
from tests.accounts.factories import MembershipFactory
from tests.marketplace.factories import MarketFactory, ProviderEndpointFactory
from tests.relay.servers import serve

MODEL = "model-a"


@dataclass
class Seller:
    """A provider org in the test, its fake upstream and its endpoint."""

    principal: Principal
    fake: FakeProvider
    endpoint: ProviderEndpoint

    @property
    def org(self):
        return self.principal.org


@pytest.fixture(autouse=True)
def _fresh_relay_state():
    # The relay's in-process caches, unflushed health and queued captures belong to the test
    # that made them.
    health._pending = health._Pending()
    captures_discard()
    relay_caches_clear()
    yield
    health._pending = health._Pending()
    captures_discard()
    relay_caches_clear()


@pytest.fixture
def market(transactional_db):
    return MarketFactory()


@pytest.fixture
def stack():
    with contextlib.ExitStack() as servers:
        yield servers


@pytest.fixture
def relay_url(stack, transactional_db):
    return stack.enter_context(serve(RelayApp(read_timeout_s=5), lifespan="on"))


@pytest.fixture
def fake(stack):
    """Start a fake provider; returns (app, base URL)."""

    def start(**config):
        app = FakeProvider(FakeProviderConfig(**config))
        return app, stack.enter_context(serve(app))

    return start


@pytest.fixture
def provider_org(transactional_db):
    def make(name: str):
        membership = MembershipFactory(
            org__name=name, org__is_buyer=False, org__is_provider=True, role=Role.OWNER
        )
        return Principal.for_membership(membership)

    return make


@pytest.fixture
def endpoint(market):
    def make(principal, base_url: str, **fields) -> ProviderEndpoint:
        return ProviderEndpointFactory(
            org=principal.org, market=market, base_url=f"{base_url}/v1", models=[MODEL], **fields
        )

    return make


@pytest.fixture
def relay_key():
    def make(principal, scopes=("relay",)) -> str:
        key, secret = api_key_create(principal=principal, name="relay key", scopes=list(scopes))
        make.last = key
        return secret

    return make


@pytest.fixture
def client_for(relay_url):
    def make(secret: str, **options) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{relay_url}/v1", api_key=secret, max_retries=0, **options)

    return make


@pytest.fixture
def seller_with(provider_org, fake, endpoint):
    """A provider with a fake upstream (configured by keywords) and a verified endpoint to it."""

    def make(name: str, **config) -> Seller:
        principal = provider_org(name)
        app, url = fake(**config)
        return Seller(principal=principal, fake=app, endpoint=endpoint(principal, url))

    return make


@pytest.fixture
def entitle(market, fund):
    """Buy `lots` (1M tokens each) from `seller` at `price_micro` through the real engine."""

    def buy(buyer, seller, *, lots: int = 2, price_micro: int = 4_000_000):
        fund(buyer.org.id, lots * price_micro * 2)
        order_place(
            principal=seller.principal,
            market_id=market.id,
            side="sell",
            price_micro=price_micro,
            lots=lots,
        )
        order_place(
            principal=buyer, market_id=market.id, side="buy", price_micro=price_micro, lots=lots
        )
        engine._BOOKS.clear()
        engine.market_match(market_id=market.id)
        engine._BOOKS.clear()
        from settlement.models import Entitlement

        return Entitlement.objects.filter(buyer_org=buyer.org, provider_org=seller.org).latest("id")

    return buy
