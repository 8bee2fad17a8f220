"""Routing: entitlements first, then pay-as-you-go by price; fallback; health; charged once."""

import socket

import httpx
import openai
import pytest
from django.utils import timezone

from accounts.models import Role
from accounts.principal import Principal
from marketplace.services import order_place
from relay.captures import relay_captures_flush
from relay.health import health_flush
from relay.models import HealthBucket, RelayRequest
from relay.services import relay_caches_clear
from settlement.models import LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.accounts.factories import MembershipFactory
from tests.relay.conftest import MODEL

Kind = LedgerAccount.Kind
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Route me."}], "max_tokens": 10}


@pytest.fixture
def sellers(seller_with):
    return seller_with


def _closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens here now: connections are refused
    return f"http://127.0.0.1:{port}"


def test_payg_goes_to_the_provider_with_the_best_ask(
    buyer, sellers, market, fund, relay_key, client_for
):
    dear, cheap = sellers("Dear", seed=1), sellers("Cheap", seed=2)
    order_place(
        principal=dear.principal, market_id=market.id, side="sell", price_micro=5_500_000, lots=2
    )
    order_place(
        principal=cheap.principal, market_id=market.id, side="sell", price_micro=4_500_000, lots=2
    )
    fund(buyer.org.id, 1_000_000)

    client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert (cheap.fake.requests, dear.fake.requests) == (1, 0)


def test_entitlements_come_before_cheaper_payg(
    buyer, sellers, market, fund, entitle, relay_key, client_for
):
    cheap, bought = sellers("Cheap", seed=1), sellers("Bought", seed=2)
    entitlement = entitle(buyer, bought, price_micro=5_000_000)
    # Asked after the trade, so the buyer's bid could not take it.
    order_place(
        principal=cheap.principal, market_id=market.id, side="sell", price_micro=4_000_000, lots=2
    )
    available = account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE)

    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert (bought.fake.requests, cheap.fake.requests) == (1, 0)
    record = RelayRequest.objects.get()
    assert record.entitlement_id == entitlement.id
    entitlement.refresh_from_db()
    billable = answer.usage.prompt_tokens + answer.usage.completion_tokens * 6
    assert entitlement.tokens_used == billable
    assert record.cost_micro == billable * 5_000_000 // 1_000_000
    # Paid from the entitlement: the available balance is untouched and nothing stays reserved.
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == available
    assert not entitlement.relay_reservations.exists()


def test_earliest_expiring_entitlement_is_used_first(
    buyer, sellers, market, fund, entitle, relay_key, client_for
):
    later, sooner = sellers("Later", seed=1), sellers("Sooner", seed=2)
    first = entitle(buyer, later)
    second = entitle(buyer, sooner)
    type(first).objects.filter(pk=second.pk).update(
        expires_at=first.expires_at - timezone.timedelta(days=1)
    )

    client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert (sooner.fake.requests, later.fake.requests) == (1, 0)


def test_a_5xx_falls_back_and_charges_once(buyer, sellers, market, fund, relay_key, client_for):
    broken, working = sellers("Broken", error_rate=1.0), sellers("Working", seed=2)
    order_place(
        principal=broken.principal, market_id=market.id, side="sell", price_micro=4_000_000, lots=2
    )
    fund(buyer.org.id, 1_000_000)

    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert (broken.fake.requests, working.fake.requests) == (1, 1)
    record = RelayRequest.objects.get()
    assert (record.attempts, record.endpoint_id) == (2, working.endpoint.id)
    # Pay-as-you-go at the reference price: no trades yet, so the best ask, $4.00 per 1M.
    cost = (answer.usage.prompt_tokens + answer.usage.completion_tokens * 6) * 4
    assert record.cost_micro == cost
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000 - cost
    relay_captures_flush()
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert ledger_check() == []


def test_a_refused_connection_falls_back(
    buyer, sellers, provider_org, endpoint, fund, relay_key, client_for
):
    dead = provider_org("Dead")
    endpoint(dead, _closed_port_url())
    working = sellers("Working", seed=2)
    fund(buyer.org.id, 1_000_000)

    chunks = list(client_for(relay_key(buyer)).chat.completions.create(**CHAT, stream=True))

    assert working.fake.requests == 1
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert RelayRequest.objects.get().attempts == 2


def test_when_every_provider_fails_it_is_503_and_nothing_is_charged(
    buyer, sellers, fund, relay_key, client_for
):
    sellers("Broken", error_rate=1.0)
    sellers("Also broken", error_rate=1.0, seed=5)
    fund(buyer.org.id, 1_000_000)

    with pytest.raises(openai.InternalServerError) as error:
        client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert error.value.status_code == 503
    assert error.value.code == "no_healthy_provider"
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert RelayRequest.objects.get().status == "failed"


def test_missing_usage_is_estimated_from_the_text_and_marked(
    buyer, sellers, fund, relay_key, client_for
):
    sellers("Quiet", include_usage=False)
    fund(buyer.org.id, 1_000_000)

    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    record = RelayRequest.objects.get()
    text = answer.choices[0].message.content
    assert answer.usage is None
    assert record.is_estimated
    assert record.output_tokens == -(-len(text) // 4)
    assert record.input_tokens == -(-len("Route me.") // 4) + 4
    assert record.cost_micro == (record.input_tokens + record.output_tokens * 6) * 5


def test_an_endpoint_under_80_percent_is_tried_last(
    buyer, sellers, market, fund, relay_key, client_for
):
    failing, healthy = sellers("Failing", seed=1), sellers("Healthy", seed=2)
    order_place(
        principal=failing.principal, market_id=market.id, side="sell", price_micro=4_000_000, lots=2
    )
    minute = timezone.now().replace(second=0, microsecond=0)
    HealthBucket.objects.create(
        endpoint=failing.endpoint, minute=minute, requests=100, successes=70
    )
    HealthBucket.objects.create(
        endpoint=healthy.endpoint, minute=minute, requests=100, successes=99
    )
    fund(buyer.org.id, 1_000_000)

    client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert (healthy.fake.requests, failing.fake.requests) == (1, 0)


def test_fewer_than_100_requests_are_not_judged(
    buyer, sellers, market, fund, relay_key, client_for
):
    young, other = sellers("Young", seed=1), sellers("Other", seed=2)
    order_place(
        principal=young.principal, market_id=market.id, side="sell", price_micro=4_000_000, lots=2
    )
    minute = timezone.now().replace(second=0, microsecond=0)
    HealthBucket.objects.create(endpoint=young.endpoint, minute=minute, requests=99, successes=0)
    fund(buyer.org.id, 1_000_000)

    client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert (young.fake.requests, other.fake.requests) == (1, 0)


def test_the_relay_demotes_a_provider_from_its_own_observations(
    buyer, sellers, market, fund, relay_key, client_for
):
    flaky, steady = sellers("Flaky", error_rate=0.5, seed=3), sellers("Steady", seed=4)
    order_place(
        principal=flaky.principal, market_id=market.id, side="sell", price_micro=4_000_000, lots=2
    )
    fund(buyer.org.id, 10_000_000)
    client = client_for(relay_key(buyer))
    for _ in range(110):
        client.chat.completions.create(**CHAT)
    health_flush()
    relay_caches_clear()  # as if the route cache's two seconds had passed
    seen = HealthBucket.objects.filter(endpoint=flaky.endpoint)
    assert sum(b.requests for b in seen) == flaky.fake.requests
    before = steady.fake.requests

    client.chat.completions.create(**CHAT)

    assert steady.fake.requests == before + 1  # flaky (< 80 %) now comes after steady
    assert RelayRequest.objects.filter(status="ok").count() == 111


def test_a_provider_that_refuses_its_own_route_is_skipped(
    buyer, sellers, provider_org, endpoint, fake, fund, relay_key, client_for
):
    misrouted = provider_org("Misrouted")
    _app, url = fake(seed=9)
    endpoint(misrouted, f"{url}/wrong")  # the fake answers 404 there
    working = sellers("Working", seed=2)
    fund(buyer.org.id, 1_000_000)

    client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    assert working.fake.requests == 1
    assert RelayRequest.objects.get().attempts == 2


def test_a_4xx_about_the_request_goes_back_uncharged(buyer, sellers, fund, relay_key, relay_url):
    seller = sellers("Strict", seed=1)
    fund(buyer.org.id, 1_000_000)

    response = httpx.post(
        f"{relay_url}/v1/chat/completions",
        json={"model": MODEL, "messages": "not a list"},  # the provider refuses this, not the relay
        headers={"Authorization": f"Bearer {relay_key(buyer)}"},
    )

    assert response.status_code == 400
    assert response.json()["error"]["type"] == "invalid_request_error"
    assert seller.fake.requests == 1
    assert RelayRequest.objects.get().status == "failed"
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0


@pytest.mark.parametrize("path", ["fast", "orm"])
def test_payg_is_charged_at_the_markets_reference_price(
    path, buyer, sellers, market, fund, entitle, relay_key, client_for, monkeypatch
):
    # The rule settlement meters by (settlement.selectors.reference_price_get): the last 24
    # hours' VWAP, else the best ask, else the list price. Here another buyer bought at $4.00
    # per 1M and an ask rests at $4.50: the VWAP, $4.00, applies, on either path.
    if path == "orm":
        from relay import fast_path

        monkeypatch.setattr(fast_path, "is_eligible", lambda inputs: False)
    seller = sellers("Seller", seed=1)
    other = MembershipFactory(org__name="Other Buyer", role=Role.OWNER)
    entitle(Principal.for_membership(other), seller, price_micro=4_000_000)
    order_place(
        principal=seller.principal, market_id=market.id, side="sell", price_micro=4_500_000, lots=2
    )
    fund(buyer.org.id, 1_000_000)

    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    cost = (answer.usage.prompt_tokens + answer.usage.completion_tokens * 6) * 4
    record = RelayRequest.objects.get(buyer_org=buyer.org)
    assert (record.entitlement_id, record.price_micro, record.cost_micro) == (None, 4_000_000, cost)
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000 - cost
