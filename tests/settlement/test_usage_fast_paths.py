"""Ingestion's quicker ways give what the slower ones gave: the plain insert and the insert that
skips stored rows, the hand-written lookups and the ORM's, a batch with the collector paused."""

import gc

import pytest
from django.db import transaction
from django.db.models import F, Min

from accounts.models import Org, Role, Scope
from accounts.principal import Principal
from settlement.apis import usage as usage_api
from settlement.models import (
    Entitlement,
    LedgerAccount,
    PaygMeter,
    UsageDraw,
    UsageRecord,
)
from settlement.services import ledger_check, usage_ingest
from settlement.services import usage as usage_services
from tests.accounts.factories import MembershipFactory
from tests.marketplace.factories import MarketFactory
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

pytestmark = pytest.mark.django_db

# What two records of the same figures may differ in: who they are and when they were written.
_OWN_COLUMNS = {"id", "request_id", "batch_id", "received_at", "metered_at"}


def _row(record_id: int) -> dict:
    row = UsageRecord.objects.filter(pk=record_id).values().get()
    return {name: value for name, value in row.items() if name not in _OWN_COLUMNS}


def _draws(record_id: int) -> list[tuple]:
    return list(
        UsageDraw.objects.filter(usage_record_id=record_id)
        .order_by("entitlement_id")
        .values_list("tokens", "covered_tokens", "hour")
    )


def _answer(result) -> tuple:
    record = result.record
    assert record is not None, (result.status, result.code)
    return (
        result.index,
        result.status,
        result.code,
        result.message,
        record.source,
        record.is_primary,
        record.billable_tokens,
        record.entitlement_tokens,
        record.payg_tokens,
        record.payg_price_micro,
        record.payg_cost_micro,
        record.payg_fee_micro,
        record.unfunded_tokens,
        record.unfunded_micro,
    )


def _written(principal, records, buyer_org) -> dict:
    """Ingest `records` and note everything the batch changed for `buyer_org`'s side."""
    results = usage_ingest(principal=principal, records=records)
    entitlements = Entitlement.objects.filter(buyer_org=buyer_org).order_by("id")
    return {
        "answers": [_answer(result) for result in results],
        "records": [_row(result.record.id) for result in results],
        "draws": [_draws(result.record.id) for result in results],
        "tokens_used": list(entitlements.values_list("tokens_used", flat=True)),
        "meters": list(
            PaygMeter.objects.filter(buyer_org=buyer_org).values_list(
                "tokens", "remainder", "charged_micro", "unfunded_tokens", "unfunded_micro"
            )
        ),
        "balances": list(
            LedgerAccount.objects.filter(org=buyer_org)
            .order_by("kind")
            .values_list("kind", "balance_micro")
        ),
    }


def _twin_buyer(seller, market, fund) -> Principal:
    """A second buyer with the history of the first: funded alike, the same lots bought."""
    twin = Principal.for_membership(MembershipFactory(org__name="Twin Buyer", role=Role.OWNER))
    fund(twin.org.id, usage_setup.BUYER_FUNDS_MICRO)
    usage_setup.buy_entitlement(buyer=twin, seller=seller, market=market, lots=2)
    return twin


def _without_plain_insert(monkeypatch) -> list[bool]:
    """Make every insert skip stored rows, as before the plain insert; return the calls' flags."""
    careful_insert = usage_services._records_insert
    asked = []

    def careful(columns, constants, *, expect_new):
        asked.append(expect_new)
        return careful_insert(columns, constants, expect_new=False)

    monkeypatch.setattr(usage_services, "_records_insert", careful)
    return asked


# 3 x 1,600 billable tokens draw 2 lots down; 3 x 3,000,600 go past them, paid as they go.
@pytest.mark.parametrize("input_tokens", [1_000, 3_000_000])
def test_the_plain_insert_writes_and_answers_as_the_skipping_insert(
    seller, buyer, market, buy, fund, monkeypatch, input_tokens
):
    buy(lots=2)
    twin = _twin_buyer(seller, market, fund)
    batch = [
        usage(market, buyer.org, input_tokens=input_tokens),
        usage(market, buyer.org, input_tokens=input_tokens, cached_input_tokens=37),
        usage(market, buyer.org, input_tokens=input_tokens, output_tokens=7),
    ]

    plain = _written(seller, batch, buyer.org)
    asked = _without_plain_insert(monkeypatch)
    twins_batch = [
        record._replace(counterparty=twin.org.slug, request_id=f"{record.request_id}-twin")
        for record in batch
    ]
    careful = _written(seller, twins_batch, twin.org)

    assert asked == [True]
    for row in plain["records"] + careful["records"]:
        row.pop("buyer_org_id")
    assert plain == careful
    assert [answer[1] for answer in plain["answers"]] == ["accepted"] * 3
    if input_tokens > 1_000:
        assert sum(answer[8] for answer in plain["answers"]) > 0  # paid as they went
    assert ledger_check() == []


def test_a_batch_with_a_stored_record_is_written_again_skipping_it(seller, buyer, market, buy):
    entitlement = buy()
    stored = usage(market, buyer.org)
    [first] = usage_ingest(principal=seller, records=[stored])
    fresh = [usage(market, buyer.org), usage(market, buyer.org)]

    results = usage_ingest(principal=seller, records=[fresh[0], stored, fresh[1]])

    assert [result.status for result in results] == ["accepted", "duplicate", "accepted"]
    assert results[1].record.id == first.record.id
    # Nothing of the plain insert that failed stayed: each request id is stored once.
    assert UsageRecord.objects.count() == 3
    assert UsageDraw.objects.count() == 3
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 3 * 1_600
    assert ledger_check() == []


def test_the_hand_written_lookups_find_what_the_orm_finds(seller, buyer, market, buy):
    buy()
    buy()
    other = MarketFactory(tier=market.tier)
    records = [
        usage(market, buyer.org),
        usage(other, buyer.org),
        usage(market, buyer.org, counterparty="no-such-org"),
        usage(market, buyer.org, market="NOPE-EU"),
    ]

    found = usage_services._lookups(records, seller.org)

    assert found.markets == {market.symbol: market, other.symbol: other}
    assert found.markets[market.symbol].tier == market.tier
    for name in ("output_weight_bp", "cache_weight_bp", "created_at", "band_bp"):
        assert getattr(found.markets[market.symbol], name) == getattr(market, name)
    assert found.orgs == {buyer.org.slug: Org.objects.get(pk=buyer.org.pk)}
    assert found.orgs[buyer.org.slug].is_buyer
    first = Entitlement.objects.filter(buyer_org=buyer.org).aggregate(first=Min("created_at"))
    assert found.relationship_starts == {(buyer.org.id, seller.org.id, market.id): first["first"]}


def test_the_hand_written_read_of_open_entitlements_matches_the_locked_one(
    seller, buyer, market, buy
):
    used_up = buy()
    Entitlement.objects.filter(pk=used_up.pk).update(tokens_used=F("tokens_bought"))
    closed = buy()
    Entitlement.objects.filter(pk=closed.pk).update(status=Entitlement.Status.EXHAUSTED)
    open_ones = [buy(), buy()]
    pairs = {(buyer.org.id, seller.org.id, market.id), (buyer.org.id, seller.org.id, 0)}

    read = usage_services._open_entitlements(pairs, lock=False)
    with transaction.atomic():
        locked = usage_services._open_entitlements(pairs, lock=True)

    assert read == locked == sorted(open_ones, key=lambda entitlement: entitlement.id)
    for mine, theirs in zip(read, locked, strict=True):
        for field in Entitlement._meta.concrete_fields:
            assert getattr(mine, field.attname) == getattr(theirs, field.attname)


def test_a_batch_pauses_the_collector_and_turns_it_back_on():
    assert gc.isenabled()
    with usage_api._collector_paused():
        assert not gc.isenabled()
        with usage_api._collector_paused():  # a second batch, in another thread
            pass
        assert not gc.isenabled()  # the first is still in progress
    assert gc.isenabled()

    with pytest.raises(RuntimeError), usage_api._collector_paused():
        raise RuntimeError("a batch that fails")
    assert gc.isenabled()

    gc.disable()
    try:
        with usage_api._collector_paused():
            pass
        assert not gc.isenabled()  # a process that turned it off keeps it off
    finally:
        gc.enable()


def test_the_api_answers_with_the_collector_back_on(seller, buyer, market, buy, api_for):
    buy()
    record = usage(market, buyer.org)
    item = {
        **record._asdict(),
        "started_at": record.started_at.isoformat(),
        "ended_at": record.ended_at.isoformat(),
    }
    client = api_for(seller, scopes=[Scope.USAGE_WRITE])

    answered = client.post("/api/v1/usage", {"records": [item]}, format="json")
    refused = client.post("/api/v1/usage", {"records": [item] * 1_001}, format="json")

    assert answered.status_code == 200, answered.content
    assert answered.json()["accepted"] == 1
    assert refused.status_code == 400
    assert gc.isenabled()


def test_a_pause_that_never_ends_still_collects_now_and_then(monkeypatch):
    """Batches that always overlap keep the pause on: one ending past the bound collects."""
    collections = []
    monkeypatch.setattr(usage_api.gc, "collect", lambda: collections.append(1))
    with usage_api._collector_paused():
        with usage_api._collector_paused():  # ends well within the bound: nothing collected
            pass
        assert collections == []
        usage_api._paused_since -= usage_api.COLLECT_AT_LEAST_EVERY_S
        with usage_api._collector_paused():  # ends past it, the first batch still running
            pass
        assert collections == [1]
        assert not gc.isenabled()
    assert gc.isenabled()
    assert collections == [1]  # the pause ended: the collector's own thresholds take over
