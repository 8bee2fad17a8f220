"""Per-key limits (requests and tokens per minute, spend caps) and holds under concurrency."""

import asyncio
from datetime import UTC, datetime

import openai
import pytest

from accounts.models import ApiKey
from relay.captures import relay_captures_flush
from relay.limits import spend_window_start
from relay.models import KeyCounter, KeyPolicy, RelayRequest, SpendWindow
from settlement.models import Hold, LedgerAccount
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.relay.conftest import MODEL

Kind = LedgerAccount.Kind
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Limit me."}], "max_tokens": 10}


@pytest.fixture
def seller(seller_with):
    return seller_with("Seller", seed=1)


def _policy(**fields) -> KeyPolicy:
    return KeyPolicy.objects.create(api_key=ApiKey.objects.latest("id"), **fields)


def test_requests_per_minute_gives_429_with_retry_after(buyer, seller, fund, relay_key, client_for):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))
    _policy(requests_per_minute=2)
    client.chat.completions.create(**CHAT)
    client.chat.completions.create(**CHAT)

    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(**CHAT)

    assert error.value.code == "rate_limit_exceeded"
    assert error.value.body["param"] == "requests_per_minute"
    assert 1 <= int(error.value.response.headers["retry-after"]) <= 60
    assert seller.fake.requests == 2


def test_tokens_per_minute_counts_the_worst_case_then_the_actual(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))
    _policy(tokens_per_minute=40)
    answer = client.chat.completions.create(**CHAT)  # worst case 9 + 10; uses fewer

    counter = KeyCounter.objects.get(kind=KeyCounter.Kind.TOKENS)
    assert counter.value == answer.usage.total_tokens
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(**{**CHAT, "max_tokens": 40})
    assert error.value.body["param"] == "tokens_per_minute"


def test_a_spend_cap_gives_402_naming_the_limit(buyer, seller, fund, relay_key, client_for):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))
    _policy(spend_cap_micro=500, spend_window=SpendWindow.DAY)  # a worst case here is 345
    answer = client.chat.completions.create(**CHAT)
    spent = RelayRequest.objects.get().cost_micro

    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(**CHAT)

    assert error.value.status_code == 402
    assert (error.value.code, error.value.body["param"]) == ("budget_exceeded", "spend_cap_day")
    assert KeyCounter.objects.get(kind=KeyCounter.Kind.SPEND).value == spent
    assert answer.usage.completion_tokens > 0
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000 - spent


def test_spend_windows_are_calendar_utc():
    moment = datetime(2026, 11, 25, 13, 45, tzinfo=UTC)  # a Wednesday
    assert spend_window_start(SpendWindow.DAY, moment) == datetime(2026, 11, 25, tzinfo=UTC)
    assert spend_window_start(SpendWindow.WEEK, moment) == datetime(2026, 11, 23, tzinfo=UTC)
    assert spend_window_start(SpendWindow.MONTH, moment) == datetime(2026, 11, 1, tzinfo=UTC)


def test_a_region_header_for_a_region_without_the_model_is_404(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer), default_headers={"X-Region": "nowhere"})
    with pytest.raises(openai.NotFoundError) as error:
        client.chat.completions.create(**CHAT)
    assert error.value.body["param"] == "X-Region"


@pytest.mark.postgres
def test_fifty_concurrent_requests_never_spend_past_the_balance(
    buyer, seller, fund, relay_key, relay_url
):
    # A worst case is 9 input + 60 weighted output tokens at $5/M = 345 micro-USD; the balance
    # covers eleven such holds at once, so some of the fifty must be refused while others fly.
    fund(buyer.org.id, 4_000)
    secret = relay_key(buyer)

    async def one(client):
        try:
            return await client.chat.completions.create(**CHAT)
        except openai.APIStatusError as error:
            return error.status_code

    async def run():
        client = openai.AsyncOpenAI(base_url=f"{relay_url}/v1", api_key=secret, max_retries=0)
        results = await asyncio.gather(*(one(client) for _ in range(50)))
        await client.close()
        return results

    results = asyncio.run(run())

    served = [r for r in results if not isinstance(r, int)]
    refused = [r for r in results if isinstance(r, int)]
    assert served and refused and set(refused) == {402}
    spent = sum(r.cost_micro for r in RelayRequest.objects.filter(status="ok"))
    assert RelayRequest.objects.filter(status="ok").count() == len(served)
    assert 0 < spent <= 4_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 4_000 - spent
    relay_captures_flush()
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert not Hold.objects.filter(status=Hold.Status.OPEN).exists()
    assert ledger_check() == []


def test_what_a_dead_relay_left_set_aside_is_given_back(buyer, seller, fund, entitle, relay_key):
    from datetime import timedelta

    from django.db import transaction
    from django.utils import timezone

    from relay.models import EntitlementReservation
    from relay.services import relay_stale_release
    from settlement.services import hold_place

    fund(buyer.org.id, 1_000_000)
    entitlement = entitle(buyer, seller)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=5_000, reference="relay:req_dead")
        hold_place(org_id=buyer.org.id, amount_micro=7_000, reference="relay:req_alive")
    EntitlementReservation.objects.create(entitlement=entitlement, request_id="req_dead", tokens=9)
    EntitlementReservation.objects.create(entitlement=entitlement, request_id="req_alive", tokens=9)
    long_ago = timezone.now() - timedelta(hours=2)
    Hold.objects.filter(reference="relay:req_dead").update(created_at=long_ago)
    EntitlementReservation.objects.filter(request_id="req_dead").update(created_at=long_ago)
    held = account_balance(org_id=buyer.org.id, kind=Kind.HELD)

    assert relay_stale_release() == 2
    assert relay_stale_release() == 0

    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == held - 5_000
    assert Hold.objects.get(reference="relay:req_alive").status == Hold.Status.OPEN
    assert list(EntitlementReservation.objects.values_list("request_id", flat=True)) == [
        "req_alive"
    ]
    assert ledger_check() == []
