"""Ingestion draws new records down before it writes them, and meters again when that read aged."""

from datetime import UTC, timedelta
from datetime import timezone as fixed_offset

import pytest
from django.db.models import F
from django.utils import timezone

from settlement.models import Entitlement, UsageDraw, UsageRecord
from settlement.services import ledger_check, usage_ingest
from settlement.services import usage as usage_services
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

pytestmark = pytest.mark.django_db


def _stored(result) -> UsageRecord:
    return UsageRecord.objects.get(pk=result.record.id)


def _utc_hour(moment):
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


# Half an hour off UTC, so truncating the local time instead would name another instant.
INDIA = fixed_offset(timedelta(hours=5, minutes=30))


def test_a_record_covered_by_entitlements_is_stored_metered(seller, buyer, market, buy):
    entitlement = buy()

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    stored = _stored(result)
    assert stored.metered_at is not None
    assert stored.entitlement_tokens == stored.billable_tokens == 1_600
    assert stored.payg_tokens == stored.unfunded_tokens == 0
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 1_600
    assert UsageDraw.objects.get(usage_record_id=stored.id).covered_tokens == 1_600
    assert ledger_check() == []


def test_a_draw_moved_since_the_read_is_metered_again(seller, buyer, market, buy, monkeypatch):
    entitlement = buy()
    read_then_drawn = usage_services._draw_plan

    def drawn_meanwhile(records):
        plan = read_then_drawn(records)
        Entitlement.objects.filter(pk=entitlement.pk).update(tokens_used=F("tokens_bought") - 1_000)
        return plan

    monkeypatch.setattr(usage_services, "_draw_plan", drawn_meanwhile)

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])

    stored = _stored(result)
    assert (stored.entitlement_tokens, stored.payg_tokens) == (1_000, 600)
    assert (result.record.entitlement_tokens, result.record.payg_tokens) == (1_000, 600)
    assert stored.payg_cost_micro == result.record.payg_cost_micro > 0
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == entitlement.tokens_bought
    assert UsageDraw.objects.get(usage_record_id=stored.id).covered_tokens == 1_000


def test_a_batch_with_a_stored_record_meters_the_new_ones_once(seller, buyer, market, buy):
    entitlement = buy()
    first = usage(market, buyer.org)
    usage_ingest(principal=seller, records=[first])

    old, new = usage_ingest(principal=seller, records=[first, usage(market, buyer.org)])

    assert (old.status, new.status) == ("duplicate", "accepted")
    stored = _stored(new)
    assert stored.metered_at is not None
    assert stored.entitlement_tokens == 1_600
    entitlement.refresh_from_db()
    assert entitlement.tokens_used == 3_200
    assert UsageDraw.objects.filter(usage_record_id=stored.id).count() == 1
    assert ledger_check() == []


def test_a_batch_past_the_entitlements_is_metered_after_the_insert(seller, buyer, market, buy):
    buy()

    big, small = usage_ingest(
        principal=seller,
        records=[
            usage(market, buyer.org, input_tokens=1_999_000, output_tokens=0),
            usage(market, buyer.org, input_tokens=2_000, output_tokens=0),
        ],
    )

    assert _stored(big).entitlement_tokens + _stored(small).entitlement_tokens == 2_000_000
    assert _stored(small).payg_tokens + _stored(small).unfunded_tokens == 1_000
    assert ledger_check() == []


def test_each_draw_carries_the_utc_hour_its_record_ended_in(seller, buyer, market, buy):
    now = timezone.now()
    buy(created_at=now - timedelta(hours=3))
    earlier = (now - timedelta(hours=1)).astimezone(INDIA)

    last_hour, this_hour = usage_ingest(
        principal=seller,
        records=[
            usage(market, buyer.org, started_at=earlier - timedelta(seconds=2), ended_at=earlier),
            usage(market, buyer.org, ended_at=now.astimezone(INDIA)),
        ],
    )

    assert dict(UsageDraw.objects.values_list("usage_record_id", "hour")) == {
        last_hour.record.id: _utc_hour(earlier),
        this_hour.record.id: _utc_hour(now),
    }


def test_a_record_metered_again_draws_in_the_hour_it_ended_in(
    seller, buyer, market, buy, monkeypatch
):
    entitlement = buy()
    read_then_drawn = usage_services._draw_plan

    def drawn_meanwhile(records):
        plan = read_then_drawn(records)
        Entitlement.objects.filter(pk=entitlement.pk).update(tokens_used=F("tokens_bought") - 1_000)
        return plan

    monkeypatch.setattr(usage_services, "_draw_plan", drawn_meanwhile)
    ended_at = timezone.now().astimezone(INDIA)

    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org, ended_at=ended_at)])

    assert UsageDraw.objects.get(usage_record_id=result.record.id).hour == _utc_hour(ended_at)
