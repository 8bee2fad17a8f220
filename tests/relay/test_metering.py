"""The relay as the primary meter: each request it serves becomes a relay usage record that
reconciliation checks the provider's report against and the settlement run pays from."""

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from django.db import connections
from django.utils import timezone

from relay.models import EntitlementReservation, RelayRequest
from settlement.models import (
    Hold,
    LedgerAccount,
    LedgerTransaction,
    UsageDraw,
    UsageRecord,
    is_relay_request_id,
)
from settlement.selectors import account_balance
from settlement.services import ledger_check, settlement_run, usage_ingest
from settlement.services.usage import UsageInput
from tests.relay.conftest import MODEL

Kind = LedgerAccount.Kind
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Tell me about lots."}]}


@pytest.fixture
def seller(seller_with):
    return seller_with("Seller One", seed=1)


def test_a_pay_as_you_go_request_is_recorded_as_the_primary_meter(
    buyer, seller, fund, relay_key, client_for
):
    fund(buyer.org.id, 1_000_000)

    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT, max_tokens=20)

    served = RelayRequest.objects.get()
    record = UsageRecord.objects.get()
    billable = answer.usage.prompt_tokens + answer.usage.completion_tokens * 6
    assert (record.source, record.source_org_id, record.is_primary) == ("relay", None, True)
    assert (record.request_id, record.provider_org_id) == (served.request_id, seller.org.id)
    assert (record.billable_tokens, record.payg_tokens, record.entitlement_tokens) == (
        billable,
        billable,
        0,
    )
    assert record.payg_cost_micro == served.cost_micro > 0
    assert not UsageDraw.objects.exists()


def test_the_providers_report_of_a_relayed_request_checks_it_and_the_run_pays_the_hour(
    buyer, seller, market, entitle, relay_key, client_for
):
    entitlement = entitle(buyer, seller, price_micro=5_000_000)
    answer = client_for(relay_key(buyer)).chat.completions.create(**CHAT)
    billable = answer.usage.prompt_tokens + answer.usage.completion_tokens * 6
    record = UsageRecord.objects.get()
    draw = UsageDraw.objects.get()
    assert (record.entitlement_tokens, draw.entitlement_id, draw.tokens) == (
        billable,
        entitlement.id,
        billable,
    )
    # The hour settlement pays the draw in: the one its record ended in.
    assert draw.hour == record.ended_at.replace(minute=0, second=0, microsecond=0)

    # The provider saw the relay's request id and reports the same request.
    (result,) = usage_ingest(
        principal=seller.principal,
        records=[
            UsageInput(
                request_id=record.request_id,
                market=market.symbol,
                counterparty=buyer.org.slug,
                model=MODEL,
                input_tokens=answer.usage.prompt_tokens,
                cached_input_tokens=0,
                output_tokens=answer.usage.completion_tokens,
                started_at=record.started_at,
                ended_at=record.ended_at,
            )
        ],
    )
    assert result.status == "accepted"
    assert result.record.is_primary is False  # a check on the relay's meter, not a second draw
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == billable

    hour = record.ended_at.replace(minute=0, second=0, microsecond=0)
    run = settlement_run(
        period_start=hour,
        period_end=hour + timedelta(hours=1),
        now=hour + timedelta(hours=3),
    )

    assert (run.status, run.pair_hours_settled, run.tokens_settled) == ("succeeded", 1, billable)
    delivered = billable * 5_000_000 // 1_000_000
    fee = delivered * entitlement.provider_fee_bp // 10_000
    assert account_balance(org_id=seller.org.id, kind=Kind.EARNED) == delivered - fee
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.DELIVERY).count() == 1
    assert ledger_check() == []


def _in_flight_request_id(*, is_entitled: bool) -> str:
    """The id of the request the relay has admitted and not settled yet."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if is_entitled:
            ids = list(EntitlementReservation.objects.values_list("request_id", flat=True))
        else:
            ids = [
                reference.removeprefix("relay:")
                for reference in Hold.objects.filter(
                    reference__startswith="relay:", status=Hold.Status.OPEN
                ).values_list("reference", flat=True)
            ]
        if ids:
            return ids[0]
        time.sleep(0.02)
    raise AssertionError("the relay admitted no request")


@pytest.mark.parametrize("is_entitled", [True, False], ids=["entitled", "pay-as-you-go"])
def test_a_providers_report_that_beats_the_relays_settle_still_only_checks_it(
    buyer, seller_with, market, fund, entitle, relay_key, client_for, is_entitled
):
    """A provider may report a request while the relay is still serving it: the relay meters it,
    the report checks it, and the buyer pays for it once."""
    slow = seller_with("Slow Seller", seed=1, latency_ms=1_500)
    fund(buyer.org.id, 5_000_000)
    entitlement = entitle(buyer, slow, price_micro=5_000_000) if is_entitled else None
    client = client_for(relay_key(buyer))

    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(client.chat.completions.create, **CHAT, max_tokens=20)
        request_id = _in_flight_request_id(is_entitled=is_entitled)
        now = timezone.now()
        (report,) = usage_ingest(
            principal=slow.principal,
            records=[
                UsageInput(
                    request_id=request_id,
                    market=market.symbol,
                    counterparty=buyer.org.slug,
                    model=MODEL,
                    input_tokens=40,
                    cached_input_tokens=0,
                    output_tokens=20,
                    started_at=now - timedelta(seconds=1),
                    ended_at=now,
                )
            ],
        )
        usage = answer.result(timeout=30).usage
    connections.close_all()  # the relay's threads' connections, before the test's reads

    assert is_relay_request_id(request_id)
    assert (report.status, report.code) == ("accepted", ""), report
    billable = usage.prompt_tokens + usage.completion_tokens * 6
    primary = UsageRecord.objects.get(request_id=request_id, is_primary=True)
    assert (primary.source, primary.billable_tokens) == ("relay", billable)
    served = RelayRequest.objects.get(request_id=request_id)
    assert served.status == RelayRequest.Status.OK
    if is_entitled:
        entitlement.refresh_from_db()
        assert entitlement.tokens_used == billable  # drawn once, by the relay
        assert UsageDraw.objects.get().usage_record == primary
    else:
        assert primary.payg_cost_micro == served.cost_micro > 0
        assert not UsageDraw.objects.exists()
    assert ledger_check() == []
