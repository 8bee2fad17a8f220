"""The ledger under real concurrency and the PostgreSQL guards (skipped on SQLite)."""

import pytest
from django.db import DatabaseError, transaction

from core.errors import InsufficientFunds
from settlement.models import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.selectors import account_balance
from settlement.services import (
    hold_place,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)
from tests.concurrency import race

Kind = LedgerAccount.Kind
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def test_twenty_concurrent_holds_never_overspend(buyer, fund):
    fund(buyer.org.id, 100_000_000)

    def place(i: int):
        with transaction.atomic():
            return hold_place(org_id=buyer.org.id, amount_micro=10_000_000, reference=f"order:{i}")

    results = race(20, place)
    placed = [r for r in results if isinstance(r, Hold)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert (len(placed), len(refused)) == (10, 10), results
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 100_000_000
    assert ledger_check() == []


def test_one_idempotency_key_from_ten_threads_posts_once(buyer, fund):
    fund(buyer.org.id, 50_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)

    def post(i: int):
        with transaction.atomic():
            return ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(available, fees, 1_000_000),
                reference="retry",
                idempotency_key="same-key",
            ).id

    results = race(10, post)
    assert len(set(results)) == 1, results
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 49_000_000
    assert ledger_check() == []


def test_one_hold_reference_from_ten_threads_holds_once(buyer, fund):
    fund(buyer.org.id, 50_000_000)

    def place(i: int):
        with transaction.atomic():
            return hold_place(org_id=buyer.org.id, amount_micro=5_000_000, reference="order:7").id

    results = race(10, place)
    assert len(set(results)) == 1, results
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 5_000_000
    assert ledger_check() == []


def test_transfers_in_opposite_directions_do_not_deadlock(buyer, provider, fund):
    fund(buyer.org.id, 50_000_000)
    fund(provider.org.id, 50_000_000)
    a = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    b = org_account(org_id=provider.org.id, kind=Kind.AVAILABLE)

    def move(i: int):
        source, destination = (a, b) if i % 2 else (b, a)
        for _ in range(10):
            with transaction.atomic():
                ledger_post(
                    kind=LedgerTransaction.Kind.TRANSFER,
                    postings=transfer(source, destination, 1_000),
                    reference="ping-pong",
                )
        return "ok"

    assert race(8, move) == ["ok"] * 8
    assert ledger_check() == []


def test_an_unbalanced_transaction_written_by_hand_fails_at_commit(buyer):
    account = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(DatabaseError, match="unbalanced"), transaction.atomic():
        txn = LedgerTransaction.objects.create(kind="transfer", reference="by hand")
        LedgerEntry.objects.create(
            transaction=txn, account=account, amount_micro=5, balance_after_micro=5
        )
    assert not LedgerTransaction.objects.exists()


def test_ledger_entries_cannot_be_updated_or_deleted(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    entry = LedgerEntry.objects.get(account__org=buyer.org)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.filter(pk=entry.pk).update(amount_micro=2_000_000)
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerEntry.objects.filter(pk=entry.pk).delete()
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic():
        LedgerTransaction.objects.filter(pk=entry.transaction_id).update(reason="rewritten")
    entry.refresh_from_db()
    assert entry.amount_micro == 1_000_000
