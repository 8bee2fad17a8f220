"""The balanced-transaction guard as migration 0014 checks it: once per statement, again at commit.

Rows are written with raw SQL, so no service stands in between, and committed for real.
"""

import pytest
from django.db import IntegrityError, connection, transaction
from django.utils import timezone

from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.services import org_account, platform_account

Kind = LedgerAccount.Kind
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]

TRANSACTIONS = LedgerTransaction._meta.db_table
ENTRIES = LedgerEntry._meta.db_table
PENDING = "settlement_ledger_balance_pending"


@pytest.fixture
def accounts(buyer):
    return (
        org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE).id,
        platform_account(kind=Kind.STRIPE_CLEARING).id,
    )


def _transaction(cursor) -> int:
    cursor.execute(
        f"INSERT INTO {TRANSACTIONS} (kind, reference, reason, created_at) "
        "VALUES ('transfer', 'raw sql', '', %s) RETURNING id",
        [timezone.now()],
    )
    return cursor.fetchone()[0]


def _entries(cursor, *legs: tuple[int, int, int]) -> None:
    """Insert (transaction id, account id, amount) legs, all in one statement."""
    values = ", ".join(["(%s, %s, %s, %s, %s)"] * len(legs))
    params = []
    for transaction_id, account_id, amount in legs:
        params += [transaction_id, account_id, amount, amount, timezone.now()]
    cursor.execute(
        f"INSERT INTO {ENTRIES} (transaction_id, account_id, amount_micro, balance_after_micro, "
        f"created_at) VALUES {values}",
        params,
    )


def _pending(cursor) -> int:
    cursor.execute(f"SELECT count(*) FROM {PENDING}")
    return cursor.fetchone()[0]


def test_a_statement_writing_balanced_transactions_leaves_nothing_for_the_commit(accounts):
    available, clearing = accounts
    with transaction.atomic(), connection.cursor() as cursor:
        first, second = _transaction(cursor), _transaction(cursor)
        _entries(cursor, (first, available, 5), (first, clearing, -5))
        _entries(cursor, (second, available, 7), (second, clearing, -3), (second, clearing, -4))
        assert _pending(cursor) == 0
    assert LedgerEntry.objects.filter(transaction_id__in=[first, second]).count() == 5


def test_only_the_unbalanced_transaction_of_a_statement_waits_for_the_commit(accounts):
    available, clearing = accounts
    with (
        pytest.raises(IntegrityError, match="unbalanced: 1 entries summing to 9"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        balanced, unbalanced = _transaction(cursor), _transaction(cursor)
        _entries(
            cursor, (balanced, available, 5), (balanced, clearing, -5), (unbalanced, available, 9)
        )
        cursor.execute(f"SELECT transaction_id FROM {PENDING}")
        assert cursor.fetchall() == [(unbalanced,)]
    assert not LedgerEntry.objects.exists()


def test_a_transaction_balanced_by_one_statement_and_broken_by_a_later_one_is_refused(accounts):
    available, clearing = accounts
    with (
        pytest.raises(IntegrityError, match="unbalanced: 3 entries summing to 1"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        transaction_id = _transaction(cursor)
        _entries(cursor, (transaction_id, available, 5), (transaction_id, clearing, -5))
        _entries(cursor, (transaction_id, available, 1))
    assert not LedgerEntry.objects.exists()


def test_a_leg_rolled_back_with_its_savepoint_is_missed_at_commit(accounts):
    available, clearing = accounts
    with (
        pytest.raises(IntegrityError, match="unbalanced: 1 entries summing to 5"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        transaction_id = _transaction(cursor)
        _entries(cursor, (transaction_id, available, 5))
        try:
            with transaction.atomic():
                _entries(cursor, (transaction_id, clearing, -5))
                raise RuntimeError("roll the savepoint back")
        except RuntimeError:
            pass
    assert not LedgerEntry.objects.exists()


def test_a_checked_transaction_leaves_no_row_behind(accounts):
    available, clearing = accounts
    with transaction.atomic(), connection.cursor() as cursor:
        transaction_id = _transaction(cursor)
        _entries(cursor, (transaction_id, available, 5))
        _entries(cursor, (transaction_id, clearing, -5))
        assert _pending(cursor) == 1
    with connection.cursor() as cursor:
        assert _pending(cursor) == 0
