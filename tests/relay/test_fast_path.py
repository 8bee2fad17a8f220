"""The one-statement admit, settle and capture flush (relay.fast_path, PostgreSQL only)."""

import asyncio

import openai
import pytest
from django.db import connection

from relay import captures, fast_path
from relay.captures import relay_captures_flush, relay_captures_flush_fast
from relay.connections import AsyncConnections
from relay.gateway import RelayApp
from relay.models import KeyCounter, KeyPolicy, RelayRequest
from relay.pricing import Tokens
from relay.services import Outcome
from settlement.models import Hold, LedgerAccount, LedgerTransaction, UsageRecord
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.relay.conftest import MODEL
from tests.relay.servers import serve

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql", reason="the one-statement path is PostgreSQL's"
)

Kind = LedgerAccount.Kind
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say it fast."}], "max_tokens": 10}
# Fields that differ between any two requests, whichever path served them.
_VARYING = {"id", "request_id", "batch_id", "started_at", "ended_at", "received_at"}
_VARYING |= {"metered_at", "created_at", "ttft_ms", "duration_ms"}


@pytest.fixture
def seller(seller_with):
    return seller_with("Seller", seed=1)


def _row(instance) -> dict:
    return {
        field.attname: getattr(instance, field.attname)
        for field in instance._meta.concrete_fields
        if field.attname not in _VARYING
    }


def _moves(reference: str) -> list:
    return sorted(
        (txn.kind, sorted((entry.account.kind, entry.amount_micro) for entry in txn.entries.all()))
        for txn in LedgerTransaction.objects.filter(reference=reference)
    )


@pytest.fixture
def fast_calls(monkeypatch):
    """How many admits and settles relay.fast_path wrote (the relay calls it by module)."""
    calls = {"admit": 0, "settle": 0}

    def counted(name, function):
        async def call(**kwargs):
            result = await function(**kwargs)
            calls[name] += result is not None
            return result

        return call

    monkeypatch.setattr(fast_path, "relay_admit_fast", counted("admit", fast_path.relay_admit_fast))
    monkeypatch.setattr(
        fast_path, "relay_settle_fast", counted("settle", fast_path.relay_settle_fast)
    )
    return calls


def test_the_fast_path_books_what_the_orm_path_books(
    buyer, seller, fund, relay_key, client_for, fast_calls
):
    fund(buyer.org.id, 1_000_000)
    fast = client_for(relay_key(buyer)).chat.completions.create(**CHAT)
    assert fast_calls == {"admit": 1, "settle": 1}
    orm_app = RelayApp(read_timeout_s=5)
    orm_app.pg = orm_app.pg_admit = None  # what SQLite, or a key with limits, is served by
    with serve(orm_app, lifespan="on") as orm_url:
        orm_client = openai.OpenAI(base_url=f"{orm_url}/v1", api_key=relay_key(buyer))
        slow = orm_client.with_options(max_retries=0).chat.completions.create(**CHAT)
    assert fast_calls == {"admit": 1, "settle": 1}
    relay_captures_flush()

    fast_request = RelayRequest.objects.get(request_id=fast._request_id)
    slow_request = RelayRequest.objects.get(request_id=slow._request_id)
    assert fast_request.cost_micro > 0
    assert _row(fast_request) | {"api_key_id": 0} == _row(slow_request) | {"api_key_id": 0}
    fast_usage = UsageRecord.objects.get(request_id=fast._request_id)
    slow_usage = UsageRecord.objects.get(request_id=slow._request_id)
    assert _row(fast_usage) == _row(slow_usage)
    assert _moves(f"relay:{fast._request_id}") == _moves(f"relay:{slow._request_id}")
    assert not Hold.objects.filter(status=Hold.Status.OPEN).exists()
    assert ledger_check() == []


def test_a_key_with_limits_takes_the_orm_path(
    buyer, seller, fund, relay_key, client_for, fast_calls
):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))
    KeyPolicy.objects.create(api_key=relay_key.last, requests_per_minute=5)

    client.chat.completions.create(**CHAT)

    assert fast_calls == {"admit": 0, "settle": 0}
    assert KeyCounter.objects.get(api_key=relay_key.last, kind="requests").value == 1


def test_an_entitled_buyer_takes_the_orm_path(buyer, seller, fund, entitle, relay_key, client_for):
    fund(buyer.org.id, 1_000_000)
    entitlement = entitle(buyer, seller)

    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT)

    request = RelayRequest.objects.get(request_id=answer._request_id)
    assert request.entitlement_id == entitlement.id
    assert not Hold.objects.filter(reference=f"relay:{answer._request_id}").exists()


def test_a_settle_that_runs_twice_charges_once(buyer, seller, fund, relay_key):
    fund(buyer.org.id, 1_000_000)
    secret = relay_key(buyer)
    inputs = fast_path.inputs_load(authorization=f"Bearer {secret}", model=MODEL, region_code=None)

    async def run():
        pool = AsyncConnections(1)
        try:
            async with pool.connection() as conn:
                admission = await fast_path.relay_admit_fast(
                    connection=conn,
                    inputs=inputs,
                    body=dict(CHAT),
                    kind=RelayRequest.Kind.CHAT,
                    request_id="req_twice",
                )
                candidate = admission.candidates[0]
                outcome = Outcome(
                    status="ok",
                    tokens=Tokens(input_tokens=9, output_tokens=5),
                    endpoint_id=candidate.endpoint_id,
                    provider_org_id=candidate.provider_org_id,
                )
                cost = await fast_path.relay_settle_fast(
                    connection=conn, admission=admission, outcome=outcome
                )
                with pytest.raises(fast_path.SettleFailed):
                    await fast_path.relay_settle_fast(
                        connection=conn, admission=admission, outcome=outcome
                    )
                return admission, cost
        finally:
            await pool.close()

    admission, cost = asyncio.run(run())

    hold = Hold.objects.get(reference="relay:req_twice")
    assert hold.released_micro == admission.hold_micro - cost and hold.remaining_micro == cost
    assert RelayRequest.objects.filter(request_id="req_twice").count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000 - cost
    assert ledger_check() == []


def test_the_flush_books_queued_captures_in_one_statement(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 1_000_000)
    client = client_for(relay_key(buyer))
    answers = [client.chat.completions.create(**CHAT) for _ in range(3)]
    captures.captures_accounts_learn()

    async def flush():
        pool = AsyncConnections(1)
        try:
            async with pool.connection() as conn:
                return await relay_captures_flush_fast(conn)
        finally:
            await pool.close()

    assert asyncio.run(flush()) == []

    costs = [RelayRequest.objects.get(request_id=a._request_id).cost_micro for a in answers]
    assert not Hold.objects.filter(status=Hold.Status.OPEN).exists()
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000 - sum(costs)
    earned = account_balance(org_id=seller.org.id, kind=Kind.EARNED)
    assert 0 < earned <= sum(costs)
    assert ledger_check() == []


def test_the_statements_fit_the_drivers_parse_cache():
    # psycopg caches its parse of a statement's placeholders only for texts up to this length;
    # a longer one is parsed again on every request (it was, when a column pushed the settle
    # statement 5 characters past it).
    from psycopg._queries import MAX_CACHED_STATEMENT_LENGTH

    *_, settle = fast_path._settle_statement()
    for statement in (fast_path._ADMIT, settle, captures._FLUSH):
        assert len(statement) <= MAX_CACHED_STATEMENT_LENGTH
