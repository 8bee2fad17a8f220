"""Usage rows' references hold as foreign keys did, checked per statement (migration 0015).

A draw's reference to its record is still a foreign key, and not tested here.

Each case goes around the services, as a hand on the database would: the triggers are the
guard, on PostgreSQL and (for the usage rows' own writes) on SQLite.
"""

import pytest
from django.db import IntegrityError, connection, transaction

from accounts.models import Org
from settlement.models import UsageDraw, UsageRecord
from settlement.services import usage_ingest
from tests.concurrency import delete_while_named
from tests.plans import function_calls, sequential_scans
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

pytestmark = pytest.mark.django_db

MISSING_ID = 987_654_321


@pytest.fixture
def drawn(seller, buyer, market, buy) -> tuple[UsageRecord, UsageDraw]:
    """A provider's record drawn from an entitlement, and its draw."""
    buy()
    [result] = usage_ingest(principal=seller, records=[usage(market, buyer.org)])
    record = UsageRecord.objects.get(pk=result.record.id)
    return record, UsageDraw.objects.get(usage_record=record)


def _refused(sql: str, params: list) -> None:
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql, params)


@pytest.mark.parametrize("column", ["market_id", "buyer_org_id", "provider_org_id"])
def test_a_record_naming_a_missing_parent_is_refused(drawn, column):
    record, _ = drawn
    copy = UsageRecord.objects.get(pk=record.pk)
    copy.pk, copy.request_id, copy.is_primary = None, "copy-1", False
    copy.metered_at = None
    copy.entitlement_tokens = 0
    setattr(copy, column, MISSING_ID)
    if column == "provider_org_id":
        copy.source_org_id = MISSING_ID  # the provider's own report names its org twice

    with pytest.raises(IntegrityError), transaction.atomic():
        copy.save()
    assert UsageRecord.objects.count() == 1


@pytest.mark.parametrize("column", ["market_id", "buyer_org_id"])
def test_a_record_cannot_be_pointed_at_a_missing_parent(drawn, column):
    record, _ = drawn

    _refused(
        f"UPDATE settlement_usagerecord SET {column} = %s WHERE id = %s", [MISSING_ID, record.pk]
    )


def test_a_draw_naming_a_missing_entitlement_is_refused(drawn):
    _, draw = drawn

    _refused(
        "UPDATE settlement_usagedraw SET entitlement_id = %s WHERE id = %s", [MISSING_ID, draw.pk]
    )
    with pytest.raises(IntegrityError), transaction.atomic():
        UsageDraw.objects.create(
            usage_record_id=draw.usage_record_id,
            entitlement_id=MISSING_ID,
            tokens=1,
            covered_tokens=1,
            hour=draw.hour,
        )


@pytest.mark.postgres  # on SQLite a parent's delete is refused by Django's PROTECT alone
@pytest.mark.parametrize(
    ("table", "parent_of"),
    [
        ("marketplace_market", lambda record, draw: record.market_id),
        ("accounts_org", lambda record, draw: record.buyer_org_id),
        ("accounts_org", lambda record, draw: record.provider_org_id),
        ("settlement_entitlement", lambda record, draw: draw.entitlement_id),
    ],
)
def test_a_parent_named_by_usage_cannot_be_deleted(drawn, table, parent_of):
    parent_id = parent_of(*drawn)

    _refused(f"DELETE FROM {table} WHERE id = %s", [parent_id])
    _refused(f"UPDATE {table} SET id = %s WHERE id = %s", [MISSING_ID, parent_id])


def test_a_parent_no_usage_names_is_deleted_as_before(drawn):
    lonely = Org.objects.create(name="Lonely", slug="lonely")

    with connection.cursor() as cursor:
        cursor.execute("DELETE FROM accounts_org WHERE id = %s", [lonely.pk])

    assert not Org.objects.filter(pk=lonely.pk).exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_a_parent_named_by_an_uncommitted_record_waits_and_then_cannot_be_deleted(drawn):
    """The insert's check locks the parent FOR KEY SHARE until its transaction ends."""
    record, _ = drawn
    # A buyer only the uncommitted record names: the market and the orgs of `drawn` are named by
    # its trade and entitlement too, whose own guards would refuse the delete either way.
    lonely = Org.objects.create(name="Named once", slug="named-once")

    def insert() -> None:
        copy = UsageRecord.objects.get(pk=record.pk)
        copy.pk, copy.request_id, copy.is_primary = None, "copy-2", False
        copy.buyer_org_id = lonely.pk
        copy.metered_at, copy.entitlement_tokens = None, 0
        copy.save()

    outcomes = delete_while_named(
        insert, table="accounts_org", parent_id=lonely.pk, child_table="settlement_usagerecord"
    )

    assert outcomes == ["waited", "refused"]
    assert UsageRecord.objects.count() == 2


@pytest.mark.postgres
def test_usage_rows_are_checked_by_key_and_their_updates_only_when_moved(drawn):
    """Migration 0017: inserts look each parent up by key; updates that keep them are free."""
    record, draw = drawn
    parents = ["marketplace_market", "accounts_org", "settlement_entitlement"]
    checks = [
        "settlement_usagerecord_references_check",
        "settlement_usagedraw_references_check",
        "settlement_usagerecord_references_moved",
        "settlement_usagedraw_references_moved",
    ]
    with connection.cursor() as cursor:
        cursor.execute("SET LOCAL track_functions = 'pl'")
    copy = UsageRecord.objects.get(pk=record.pk)
    copy.pk, copy.request_id, copy.is_primary = None, "copy-1", False
    copy.metered_at, copy.entitlement_tokens = None, 0

    with sequential_scans(parents) as scans:
        copy.save()
        UsageDraw.objects.create(
            usage_record=copy,
            entitlement_id=draw.entitlement_id,
            tokens=1,
            covered_tokens=1,
            hour=draw.hour,
        )
        with connection.cursor() as cursor:  # every row written again, its parents kept
            cursor.execute("UPDATE settlement_usagerecord SET market_id = market_id")
            cursor.execute("UPDATE settlement_usagedraw SET entitlement_id = entitlement_id")

    assert scans == dict.fromkeys(parents, 0)
    assert function_calls(checks) == dict(zip(checks, [1, 1, 0, 0], strict=True))
