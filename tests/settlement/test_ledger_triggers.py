"""PostgreSQL's own guards on the ledger (migration 0002), whatever code writes the rows.

These tests commit for real (transactional test database), since the balance check runs at
commit. Rows are written with raw SQL so no service stands in between.
"""

import pytest
from django.db import DatabaseError, IntegrityError, connection, transaction
from django.utils import timezone

from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.services import ledger_check, org_account, platform_account

Kind = LedgerAccount.Kind
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TRANSACTIONS = LedgerTransaction._meta.db_table
ENTRIES = LedgerEntry._meta.db_table


def _insert_transaction(cursor) -> int:
    cursor.execute(
        f"INSERT INTO {TRANSACTIONS} (kind, reference, reason, created_at) "
        "VALUES ('transfer', 'raw sql', '', %s) RETURNING id",
        [timezone.now()],
    )
    return cursor.fetchone()[0]


def _insert_entry(cursor, transaction_id: int, account_id: int, amount_micro: int) -> None:
    cursor.execute(
        f"INSERT INTO {ENTRIES} (transaction_id, account_id, amount_micro, balance_after_micro, "
        "created_at) VALUES (%s, %s, %s, %s, %s)",
        [transaction_id, account_id, amount_micro, amount_micro, timezone.now()],
    )


@pytest.fixture
def accounts(buyer):
    return (
        org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
        platform_account(kind=Kind.STRIPE_CLEARING),
    )


def test_an_unbalanced_transaction_is_rejected_at_commit(accounts):
    available, _ = accounts
    inserted_before_commit = False
    with (
        pytest.raises(IntegrityError, match="unbalanced: 1 entries summing to 5"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        transaction_id = _insert_transaction(cursor)
        _insert_entry(cursor, transaction_id, available.id, 5)
        inserted_before_commit = True  # the check is deferred: the INSERT itself went in
    assert inserted_before_commit
    assert not LedgerTransaction.objects.exists()
    assert not LedgerEntry.objects.exists()


def test_legs_that_balance_by_commit_are_accepted(accounts):
    available, clearing = accounts
    with transaction.atomic(), connection.cursor() as cursor:
        transaction_id = _insert_transaction(cursor)
        _insert_entry(cursor, transaction_id, available.id, 5)
        _insert_entry(cursor, transaction_id, clearing.id, -5)
    assert LedgerEntry.objects.filter(transaction_id=transaction_id).count() == 2


def test_an_unbalanced_entry_added_to_an_old_transaction_is_rejected(accounts):
    available, clearing = accounts
    with transaction.atomic(), connection.cursor() as cursor:
        transaction_id = _insert_transaction(cursor)
        _insert_entry(cursor, transaction_id, available.id, 5)
        _insert_entry(cursor, transaction_id, clearing.id, -5)
    with (
        pytest.raises(IntegrityError, match="unbalanced"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        _insert_entry(cursor, transaction_id, available.id, 1)
    assert LedgerEntry.objects.filter(transaction_id=transaction_id).count() == 2


@pytest.fixture
def posted_entry(buyer, fund) -> LedgerEntry:
    fund(buyer.org.id, 1_000_000)
    assert ledger_check() == []
    return LedgerEntry.objects.get(account__org=buyer.org)


@pytest.mark.parametrize(
    "statement",
    [
        f"UPDATE {ENTRIES} SET amount_micro = 2000000 WHERE id = %s",
        f"UPDATE {ENTRIES} SET balance_after_micro = 0 WHERE id = %s",
        f"DELETE FROM {ENTRIES} WHERE id = %s",
    ],
    ids=["update-amount", "update-balance-after", "delete"],
)
def test_ledger_entries_cannot_be_changed(posted_entry, statement):
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [posted_entry.pk])
    posted_entry.refresh_from_db()
    assert (posted_entry.amount_micro, posted_entry.balance_after_micro) == (
        1_000_000,
        1_000_000,
    )


@pytest.mark.parametrize(
    "statement",
    [
        f"UPDATE {TRANSACTIONS} SET reason = 'rewritten' WHERE id = %s",
        f"DELETE FROM {TRANSACTIONS} WHERE id = %s",
    ],
    ids=["update", "delete"],
)
def test_ledger_transactions_cannot_be_changed(posted_entry, statement):
    with (
        pytest.raises(DatabaseError, match="append-only"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute(statement, [posted_entry.transaction_id])
    assert LedgerTransaction.objects.get(pk=posted_entry.transaction_id).reason == ""


def test_the_orm_cannot_change_entries_either(posted_entry):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.filter(pk=posted_entry.pk).update(amount_micro=1)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.filter(pk=posted_entry.pk).delete()
    assert LedgerEntry.objects.filter(pk=posted_entry.pk, amount_micro=1_000_000).exists()
