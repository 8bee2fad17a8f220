"""Usage ingestion: an answer per record, idempotent per (source, org, request id), atomic."""

from collections import Counter
from datetime import timedelta

import pytest
from django.utils import timezone

from accounts.models import Scope
from accounts.principal import Principal
from settlement.errors import UsageSourceNotAllowed, UsageSourceRequired
from settlement.models import (
    Entitlement,
    LedgerTransaction,
    UsageDraw,
    UsageRecord,
    relay_hold_reference,
    relay_request_id_new,
)
from settlement.services import hold_place, ledger_check, usage_ingest
from settlement.services import usage as usage_services
from tests.accounts.factories import MembershipFactory
from tests.concurrency import race
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

# The usage fixtures, bound here so pytest finds them.
_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

pytestmark = pytest.mark.django_db


def _statuses(results) -> list[tuple[str, str]]:
    return [(result.status, result.code) for result in results]


def test_a_provider_report_is_stored_and_draws_the_entitlement(seller, buyer, market, buy):
    entitlement = buy(lots=2)

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    assert (result.status, result.code) == ("accepted", "")
    record = result.record
    assert record.source == UsageRecord.Source.PROVIDER
    assert record.source_org_id == seller.org.id
    assert (record.buyer_org_id, record.provider_org_id) == (buyer.org.id, seller.org.id)
    assert record.is_primary
    assert record.billable_tokens == 1_000 + 100 * 6
    assert record.entitlement_tokens == 1_600
    assert record.payg_tokens == record.unfunded_tokens == 0
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 1_600
    assert UsageDraw.objects.get(usage_record=record).tokens == 1_600
    assert ledger_check() == []


def test_cached_input_counts_at_the_market_weight_rounded_down(seller, buyer, market, buy):
    buy()
    [result] = usage_ingest(
        principal=seller,
        records=[
            usage(market, buyer.org, input_tokens=10, cached_input_tokens=19, output_tokens=0)
        ],
    )
    assert result.record.billable_tokens == 10 + 1  # 19 x 0.1 = 1.9, rounded down


def test_a_retry_is_answered_with_the_first_result(seller, buyer, market, buy):
    entitlement = buy()
    batch = [usage(market, buyer.org), usage(market, buyer.org)]
    first = usage_ingest(principal=seller, records=batch)

    again = usage_ingest(principal=seller, records=batch)

    assert [r.status for r in first] == ["accepted", "accepted"]
    assert [r.status for r in again] == ["duplicate", "duplicate"]
    assert [r.record.id for r in again] == [r.record.id for r in first]
    assert again[0].record.entitlement_tokens == 1_600
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 3_200
    assert UsageRecord.objects.count() == 2
    assert ledger_check() == []


def test_the_same_request_id_with_other_figures_is_rejected(seller, buyer, market, buy):
    buy()
    record = usage(market, buyer.org)
    usage_ingest(principal=seller, records=[record])

    changed = usage(market, buyer.org, request_id=record.request_id, output_tokens=999)
    [result] = usage_ingest(principal=seller, records=[changed])

    assert (result.status, result.code) == ("rejected", "request_id_reused")
    assert UsageRecord.objects.get().output_tokens == 100


def test_a_request_id_twice_in_one_batch_is_stored_once(seller, buyer, market, buy):
    entitlement = buy()
    record = usage(market, buyer.org)

    results = usage_ingest(principal=seller, records=[record, record])

    assert [r.status for r in results] == ["accepted", "duplicate"]
    assert results[0].record.id == results[1].record.id
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 1_600


def test_a_bad_record_never_blocks_the_good_ones(seller, buyer, market, buy, db):
    buy()
    now = timezone.now()
    stranger = MembershipFactory(org__name="Never Traded").org
    other_provider = MembershipFactory(
        org__name="Other Provider", org__is_buyer=False, org__is_provider=True
    ).org
    records = [
        usage(market, buyer.org),
        usage(market, buyer.org, input_tokens=-1),
        usage(market, buyer.org, output_tokens=10_000_001),
        usage(market, buyer.org, output_tokens=market.tier.max_output_tokens + 1),
        usage(market, buyer.org, input_tokens=0, output_tokens=0),
        usage(market, buyer.org, started_at=now, ended_at=now - timedelta(seconds=1)),
        usage(market, buyer.org, started_at=now - timedelta(hours=7)),
        usage(market, buyer.org, ended_at=now + timedelta(minutes=6), started_at=now),
        usage(market, buyer.org, market="NOPE-EU"),
        usage(market, buyer.org, counterparty="no-such-org"),
        usage(market, other_provider),  # a provider reports a buyer: must be a buyer
        usage(market, buyer.org, model="not-in-the-tier"),
        usage(market, stranger),
        usage(market, buyer.org, started_at=now - timedelta(hours=1), ended_at=now),
        usage(market, buyer.org, output_tokens=50),
    ]

    results = usage_ingest(principal=seller, records=records)

    assert _statuses(results) == [
        ("accepted", ""),
        ("rejected", "negative_tokens"),
        ("rejected", "absurd_tokens"),
        ("rejected", "absurd_tokens"),
        ("rejected", "no_tokens"),
        ("rejected", "invalid_times"),
        ("rejected", "invalid_times"),
        ("rejected", "in_future"),
        ("rejected", "unknown_market"),
        ("rejected", "unknown_counterparty"),
        ("rejected", "unknown_counterparty"),
        ("rejected", "model_not_admitted"),
        ("rejected", "no_relationship"),
        ("rejected", "before_relationship"),
        ("accepted", ""),
    ]
    assert all(r.message for r in results if r.status == "rejected")
    assert UsageRecord.objects.count() == 2
    assert ledger_check() == []


def test_a_small_clock_skew_is_allowed(seller, buyer, market, buy):
    buy()
    now = timezone.now()
    ahead = usage(market, buyer.org, started_at=now, ended_at=now + timedelta(minutes=4))
    [result] = usage_ingest(principal=seller, records=[ahead])
    assert result.status == "accepted"


def test_buyer_reports_are_kept_to_check_the_provider_not_metered(seller, buyer, market, buy):
    entitlement = buy()

    [result] = usage_ingest(principal=buyer, records=[usage(market, seller.org)])

    record = result.record
    assert result.status == "accepted"
    assert record.source == UsageRecord.Source.BUYER
    assert not record.is_primary
    assert record.entitlement_tokens == record.payg_tokens == 0
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 0
    assert not LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.PAYG).exists()


def test_the_buyer_and_the_provider_may_use_the_same_request_id(seller, buyer, market, buy):
    buy()
    shared = "req-shared-1"
    usage_ingest(principal=seller, records=[usage(market, buyer.org, request_id=shared)])
    [result] = usage_ingest(principal=buyer, records=[usage(market, seller.org, request_id=shared)])
    assert result.status == "accepted"
    assert UsageRecord.objects.filter(request_id=shared).count() == 2


def test_a_request_the_relay_metered_is_not_drawn_again(seller, buyer, market, buy):
    entitlement = buy()
    report = usage(market, buyer.org, request_id=relay_request_id_new())
    relay_record = UsageRecord.objects.create(
        source=UsageRecord.Source.RELAY,
        request_id=report.request_id,
        batch_id="00000000-0000-0000-0000-000000000001",
        market=market,
        buyer_org=buyer.org,
        provider_org=seller.org,
        model="model-a",
        input_tokens=1_000,
        cached_input_tokens=0,
        output_tokens=100,
        billable_tokens=1_600,
        output_weight_bp=60_000,
        cache_weight_bp=1_000,
        is_primary=True,
        entitlement_tokens=1_600,
        metered_at=report.ended_at,
        started_at=report.started_at,
        ended_at=report.ended_at,
    )

    [result] = usage_ingest(principal=seller, records=[report])

    assert result.status == "accepted"
    assert not result.record.is_primary
    assert result.record.id != relay_record.id
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 0  # the relay counts its own draw


def test_a_relayed_request_reported_before_the_relay_records_it_is_a_check(
    seller, buyer, market, buy
):
    entitlement = buy()

    [result] = usage_ingest(
        principal=seller, records=[usage(market, buyer.org, request_id=relay_request_id_new())]
    )

    assert (result.status, result.record.is_primary) == ("accepted", False)
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 0  # the relay draws when it settles the request
    assert not UsageDraw.objects.exists()


def test_a_record_the_relay_did_not_name_is_the_providers_own_meter(seller, buyer, market, buy):
    buy()
    # OpenAI's request ids look much like this; only the relay's exact form is the relay's.
    lookalikes = ["req_" + "a" * 32, "relay_" + "A" * 32, "relay_" + "a" * 31, "x" + "relay_"]
    results = usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, request_id=request_id) for request_id in lookalikes],
    )
    assert [(r.status, r.record.is_primary) for r in results] == [("accepted", True)] * 4


def test_a_relayed_pay_as_you_go_request_is_the_pairs_relationship(seller, buyer, market, fund):
    """The pair never traded: the hold the relay placed for the request is their relationship."""
    fund(buyer.org.id, 1_000_000)
    other_buyer = Principal.for_membership(MembershipFactory(org__name="Other Buyer"))
    fund(other_buyer.org.id, 1_000_000)
    relayed, unknown, elsewhere = (relay_request_id_new() for _ in range(3))
    hold_place(org_id=buyer.org.id, amount_micro=1_000, reference=relay_hold_reference(relayed))
    hold_place(
        org_id=other_buyer.org.id, amount_micro=1_000, reference=relay_hold_reference(elsewhere)
    )

    results = usage_ingest(
        principal=seller,
        records=[usage(market, buyer.org, request_id=i) for i in (relayed, unknown, elsewhere)],
    )

    assert _statuses(results) == [
        ("accepted", ""),
        ("rejected", "no_relationship"),
        ("rejected", "no_relationship"),  # the relay served another buyer under that id
    ]
    assert results[0].record.is_primary is False
    assert ledger_check() == []


def test_an_org_that_buys_and_provides_says_which_side_it_reports(buyer, market):
    both = Principal.for_membership(
        MembershipFactory(org__name="Both", org__is_buyer=True, org__is_provider=True)
    )
    with pytest.raises(UsageSourceRequired):
        usage_ingest(principal=both, records=[usage(market, buyer.org)])
    with pytest.raises(UsageSourceNotAllowed):
        usage_ingest(principal=buyer, records=[usage(market, buyer.org)], source="provider")


def test_a_failure_half_way_leaves_nothing_written(seller, buyer, market, buy, monkeypatch):
    entitlement = buy()

    def explode(**kwargs):
        raise RuntimeError("the database went away")

    monkeypatch.setattr(usage_services, "usage_meter", explode)
    with pytest.raises(RuntimeError):
        usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    assert UsageRecord.objects.count() == 0
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 0


def test_the_api_answers_each_record(seller, buyer, market, buy, api_for):
    buy()
    client = api_for(seller, scopes=[Scope.USAGE_WRITE])
    good = usage(market, buyer.org)
    body = {
        "records": [
            {
                **good._asdict(),
                "started_at": good.started_at.isoformat(),
                "ended_at": good.ended_at.isoformat(),
            },
            {
                **good._asdict(),
                "request_id": "req-bad",
                "input_tokens": -3,
                "started_at": good.started_at.isoformat(),
                "ended_at": good.ended_at.isoformat(),
            },
        ]
    }

    response = client.post("/api/v1/usage", body, format="json")

    assert response.status_code == 200, response.json()
    data = response.json()
    assert (data["accepted"], data["duplicates"], data["rejected"]) == (1, 0, 1)
    first, second = data["results"]
    assert first["status"] == "accepted"
    assert first["record"]["billable_tokens"] == 1_600
    assert first["record"]["payg_cost"] == "0.000000"
    assert (second["status"], second["code"], second["record"]) == (
        "rejected",
        "negative_tokens",
        None,
    )
    again = client.post("/api/v1/usage", body, format="json").json()
    assert (again["accepted"], again["duplicates"], again["rejected"]) == (0, 1, 1)


def test_the_api_needs_the_usage_scope_and_a_bounded_batch(seller, buyer, market, api_for):
    record = usage(market, buyer.org)
    item = {
        **record._asdict(),
        "started_at": record.started_at.isoformat(),
        "ended_at": record.ended_at.isoformat(),
    }

    read_only = api_for(seller, scopes=[Scope.READ])
    refused = read_only.post("/api/v1/usage", {"records": [item]}, format="json")
    assert refused.status_code == 403
    assert refused.json()["error"]["code"] == "permission_denied"

    writer = api_for(seller, scopes=[Scope.USAGE_WRITE])
    too_many = writer.post("/api/v1/usage", {"records": [item] * 1_001}, format="json")
    assert too_many.status_code == 400
    assert "records" in too_many.json()["error"]["fields"]
    empty = writer.post("/api/v1/usage", {"records": []}, format="json")
    assert empty.status_code == 400


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_of_one_batch_count_it_once(seller, buyer, market, buy):
    entitlement = buy(lots=2)
    # Past the entitlement's 2M tokens, so the batch also moves pay-as-you-go money.
    batch = [usage(market, buyer.org, input_tokens=700_000, output_tokens=10) for _ in range(3)]
    batch += [usage(market, buyer.org, input_tokens=5_000, output_tokens=0) for _ in range(20)]

    def send(i: int):
        # Half the threads send the batch backwards: the inserts still take the keys in order.
        return usage_ingest(principal=seller, records=list(reversed(batch)) if i % 2 else batch)

    outcomes = race(8, send)

    assert all(isinstance(o, list) for o in outcomes), outcomes
    statuses = Counter(r.status for results in outcomes for r in results)
    assert statuses == {"accepted": len(batch), "duplicate": 7 * len(batch)}
    winners = [results for results in outcomes if results[0].status == "accepted"]
    assert len(winners) == 1
    assert UsageRecord.objects.count() == len(batch)
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 2_000_000
    records = UsageRecord.objects.all()
    billable = sum(r.billable_tokens for r in records)
    assert sum(r.entitlement_tokens for r in records) == 2_000_000
    assert sum(r.payg_tokens + r.unfunded_tokens for r in records) == billable - 2_000_000
    payg = LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.PAYG)
    assert payg.count() == sum(1 for r in records if r.payg_cost_micro)
    assert Entitlement.objects.count() == 1
    assert ledger_check() == []


def test_the_answered_record_is_the_row_stored(seller, buyer, market, buy):
    buy()

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    stored = UsageRecord.objects.get(pk=result.record.id)
    for field in UsageRecord._meta.concrete_fields:
        assert getattr(result.record, field.attname) == getattr(stored, field.attname), field.name
    assert not result.record._state.adding
    assert UsageDraw.objects.get(usage_record=result.record).tokens == 1_600
