"""The relay with the official openai client, against fake providers on local ports."""

import asyncio

import httpx
import openai
import pytest

from relay.captures import captures_discard, captures_queued, relay_captures_flush
from relay.models import RelayRequest
from settlement.models import LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.relay.conftest import MODEL

Kind = LedgerAccount.Kind
PRICE = 5_000_000  # the market's reference price, micro-USD per 1M billable tokens
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about lots."}]}


def _cost(prompt_tokens: int, completion_tokens: int, *, price: int = PRICE) -> int:
    return (prompt_tokens + completion_tokens * 6) * price // 1_000_000


def _balance(org_id: int, kind: str) -> int:
    return account_balance(org_id=org_id, kind=kind)


@pytest.fixture
def seller(seller_with):
    return seller_with("Seller One", seed=1)


def test_chat_is_served_and_charged_its_actual_cost_once(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))

    answer = client.chat.completions.create(**CHAT, max_tokens=20)

    cost = _cost(answer.usage.prompt_tokens, answer.usage.completion_tokens)
    fee = cost * 10 // 10_000
    assert answer.choices[0].message.content
    record = RelayRequest.objects.get()
    assert (record.status, record.cost_micro, record.is_estimated) == ("ok", cost, False)
    assert (record.endpoint_id, record.provider_org_id) == (seller.endpoint.id, seller.org.id)
    assert _balance(buyer.org.id, Kind.AVAILABLE) == 1_000_000 - cost
    relay_captures_flush()  # waits for a background flush in progress, books what is left
    assert _balance(buyer.org.id, Kind.HELD) == 0
    assert _balance(seller.org.id, Kind.EARNED) == cost - fee
    assert LedgerAccount.objects.get(org=None, kind=Kind.FEES).balance_micro == fee
    assert relay_captures_flush() == 0  # booked once
    assert ledger_check() == []


def test_a_settled_cost_stays_held_until_booked_and_a_dead_relays_is_captured_once(
    buyer, seller, fund, relay_key
):
    from datetime import timedelta

    from django.utils import timezone

    from relay.pricing import Tokens
    from relay.services import (
        Outcome,
        relay_admit,
        relay_authenticate,
        relay_settle,
        relay_stale_release,
    )
    from settlement.models import Hold

    fund(buyer.org.id, 1_000_000)
    key = relay_authenticate(authorization=f"Bearer {relay_key(buyer)}")
    admission = relay_admit(
        principal=key, body=dict(CHAT), kind="chat", region_code=None, request_id="req_dead"
    )
    tokens = Tokens(input_tokens=10, output_tokens=20)
    relay_settle(
        admission=admission,
        outcome=Outcome(
            status="ok",
            tokens=tokens,
            endpoint_id=seller.endpoint.id,
            provider_org_id=seller.org.id,
        ),
    )
    cost = _cost(10, 20)
    fee = cost * 10 // 10_000

    # Settled: the cost is out of reach of any other request, not yet the provider's.
    assert captures_queued() == 1
    assert _balance(buyer.org.id, Kind.AVAILABLE) == 1_000_000 - cost
    assert _balance(buyer.org.id, Kind.HELD) == cost
    assert _balance(seller.org.id, Kind.EARNED) == 0
    assert ledger_check() == []

    captures_discard()  # the relay process died before its flush
    Hold.objects.filter(reference="relay:req_dead").update(
        created_at=timezone.now() - timedelta(hours=2)
    )
    assert relay_stale_release() == 1
    assert relay_stale_release() == 0

    assert _balance(buyer.org.id, Kind.AVAILABLE) == 1_000_000 - cost
    assert _balance(buyer.org.id, Kind.HELD) == 0
    assert _balance(seller.org.id, Kind.EARNED) == cost - fee
    assert LedgerAccount.objects.get(org=None, kind=Kind.FEES).balance_micro == fee
    assert ledger_check() == []


def test_stream_sends_usage_only_to_clients_that_ask(buyer, seller, fund, relay_key, client_for):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))

    asked = list(
        client.chat.completions.create(**CHAT, stream=True, stream_options={"include_usage": True})
    )
    plain = list(client.chat.completions.create(**CHAT, stream=True))

    assert asked[-1].usage is not None
    assert all(chunk.usage is None for chunk in plain)
    text = "".join(c.choices[0].delta.content or "" for c in plain if c.choices)
    assert text == "".join(c.choices[0].delta.content or "" for c in asked if c.choices)
    records = list(RelayRequest.objects.order_by("id"))
    assert [(r.is_streamed, r.status, r.is_estimated) for r in records] == [(True, "ok", False)] * 2
    expected = 2 * _cost(asked[-1].usage.prompt_tokens, asked[-1].usage.completion_tokens)
    assert sum(r.cost_micro for r in records) == expected
    assert _balance(buyer.org.id, Kind.AVAILABLE) == 1_000_000 - expected


def test_async_client_streams_and_answers(buyer, seller, fund, relay_key, relay_url):
    fund(buyer.org.id, 1_000_000)
    secret = relay_key(buyer)

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{relay_url}/v1", api_key=secret, max_retries=0)
        whole = await client.chat.completions.create(**CHAT)
        stream = await client.chat.completions.create(**CHAT, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
        await client.close()
        return whole, "".join(pieces)

    whole, streamed = asyncio.run(run())
    assert whole.choices[0].message.content == streamed
    assert RelayRequest.objects.filter(status="ok").count() == 2


def test_completions_embeddings_and_models(buyer, seller, fund, relay_key, client_for, market):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))

    completion = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=5)
    embedded = client.embeddings.create(model=MODEL, input=["one", "two"])
    models = {model.id: model.markets for model in client.models.list()}

    assert completion.usage.completion_tokens == 5
    assert len(embedded.data) == 2
    assert models == {MODEL: [market.symbol]}
    kinds = sorted(RelayRequest.objects.values_list("kind", "status"))
    assert kinds == [("completion", "ok"), ("embedding", "ok")]


def test_a_bad_key_is_401_in_the_openai_shape(relay_url, seller):
    response = httpx.post(
        f"{relay_url}/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer nope"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "invalid_api_key"
    assert set(response.json()["error"]) == {"message", "type", "code", "param"}


def test_a_key_without_the_relay_scope_is_refused(buyer, seller, relay_key, client_for):
    client = client_for(relay_key(buyer, scopes=["read"]))
    with pytest.raises(openai.PermissionDeniedError) as error:
        client.chat.completions.create(**CHAT)
    assert error.value.code == "missing_scope"


def test_an_unknown_model_is_404(buyer, seller, fund, relay_key, client_for):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(openai.NotFoundError) as error:
        client_for(relay_key(buyer)).chat.completions.create(**{**CHAT, "model": "nope"})
    assert error.value.code == "model_not_found"
    assert error.value.body["param"] == "model"


def test_a_request_whose_worst_case_cannot_be_held_is_402(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 100)  # $0.0001: less than 20 output tokens at $30 per 1M
    client = client_for(relay_key(buyer))
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(**CHAT, max_tokens=20_000)
    assert error.value.status_code == 402
    assert (error.value.code, error.value.body["param"]) == ("insufficient_funds", "balance")
    assert _balance(buyer.org.id, Kind.AVAILABLE) == 100
    assert seller.fake.requests == 0
    assert RelayRequest.objects.count() == 0


def test_bad_max_tokens_is_400_and_changes_nothing(buyer, seller, fund, relay_key, client_for):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(openai.BadRequestError):
        client_for(relay_key(buyer)).chat.completions.create(**CHAT, max_tokens=-1)
    assert _balance(buyer.org.id, Kind.AVAILABLE) == 1_000_000
    assert seller.fake.requests == 0


def test_a_streamed_completion_is_metered_from_its_usage(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))

    chunks = list(client.completions.create(model=MODEL, prompt="Count", max_tokens=6, stream=True))

    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices)
    record = RelayRequest.objects.get()
    assert (record.kind, record.is_streamed, record.is_estimated) == ("completion", True, False)
    assert record.output_tokens == 6


def test_the_keys_default_region_picks_among_several_markets(
    buyer, seller, market, fund, relay_key, client_for
):
    from relay.models import KeyPolicy
    from relay.services import relay_caches_clear
    from tests.marketplace.factories import MarketFactory

    MarketFactory(tier=market.tier)  # the same model trades in a second region
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))
    with pytest.raises(openai.BadRequestError) as error:
        client.chat.completions.create(**CHAT)
    assert error.value.code == "region_required"

    KeyPolicy.objects.create(api_key=relay_key.last, default_region=market.region)
    relay_caches_clear()  # a policy change reaches each relay process within AUTH_TTL_S
    client.chat.completions.create(**CHAT)

    assert RelayRequest.objects.get().market_id == market.id
