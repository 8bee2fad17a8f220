"""The ledger and holds raced from many threads, each with its own PostgreSQL connection.

All threads wait at a barrier and start together, so the row locks (core.locks order) and the
idempotency keys are what keeps the money right, not luck in timing.
"""

import threading
from collections import Counter

import pytest
from django.db import connection, transaction

from core.errors import InsufficientFunds
from settlement.errors import HoldExceeded
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.selectors import account_balance
from settlement.services import (
    Posting,
    hold_capture,
    hold_place,
    hold_release,
    ledger_check,
    ledger_post,
    ledger_post_durable,
    org_account,
    platform_account,
    transfer,
)

Kind = LedgerAccount.Kind
pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def _race(workers: int, work) -> list:
    """Run `work(i)` in `workers` threads released together; each result or exception, by i."""
    barrier = threading.Barrier(workers)
    results: list = [None] * workers

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except Exception as error:
            results[i] = error
        finally:
            connection.close()  # each thread opened its own connection

    threads = [threading.Thread(target=run, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a worker is stuck"
    return results


def _kinds(results: list) -> Counter:
    return Counter(type(result).__name__ for result in results)


def test_twenty_concurrent_holds_never_overspend(buyer, fund):
    fund(buyer.org.id, 100_000_000)

    def place(i: int):
        with transaction.atomic():
            return hold_place(org_id=buyer.org.id, amount_micro=10_000_000, reference=f"bid:{i}")

    results = _race(20, place)

    assert _kinds(results) == {"Hold": 10, "InsufficientFunds": 10}, results
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 100_000_000
    assert Hold.objects.filter(org=buyer.org, status=Hold.Status.OPEN).count() == 10
    assert ledger_check() == []


def test_concurrent_transfers_out_of_one_account_never_overdraw(buyer, provider, fund):
    fund(buyer.org.id, 10_000)
    source = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    destination = org_account(org_id=provider.org.id, kind=Kind.AVAILABLE)

    def pay(i: int):
        with transaction.atomic():
            return ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(source, destination, 1_000),
                reference=f"pay:{i}",
            )

    results = _race(16, pay)

    assert _kinds(results) == {"LedgerTransaction": 10, "InsufficientFunds": 6}, results
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert account_balance(org_id=provider.org.id, kind=Kind.AVAILABLE) == 10_000
    assert ledger_check() == []


def test_concurrent_durable_transfers_never_overdraw_and_a_shared_key_writes_once(
    buyer, provider, fund
):
    fund(buyer.org.id, 10_000)
    source = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    destination = org_account(org_id=provider.org.id, kind=Kind.AVAILABLE)

    def pay(i: int):
        # Threads 0-3 retry one key, the others each pay once: 13 transfers of 1,000 for 10,000.
        return ledger_post_durable(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(source, destination, 1_000),
            reference=f"durable:{i}",
            idempotency_key="shared" if i < 4 else f"own:{i}",
        )

    results = _race(16, pay)

    assert set(_kinds(results)) <= {"LedgerTransaction", "InsufficientFunds"}, results
    assert LedgerTransaction.objects.filter(reference__startswith="durable:").count() == 10
    shared = {result.pk for result in results[:4] if isinstance(result, LedgerTransaction)}
    assert len(shared) <= 1  # every retry that succeeded got the one transaction of its key
    assert LedgerTransaction.objects.filter(idempotency_key="shared").count() == len(shared)
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert account_balance(org_id=provider.org.id, kind=Kind.AVAILABLE) == 10_000
    assert ledger_check() == []


def test_one_idempotency_key_from_ten_threads_writes_one_transaction(buyer, fund):
    fund(buyer.org.id, 50_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)

    def post(i: int):
        with transaction.atomic():
            return ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(available, fees, 1_000_000),
                reference="retry",
                idempotency_key="the-same-key",
            ).pk

    results = _race(10, post)

    assert all(isinstance(result, int) for result in results), results
    assert len(set(results)) == 1
    assert LedgerTransaction.objects.filter(idempotency_key="the-same-key").count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 49_000_000
    assert ledger_check() == []


def test_one_key_that_spends_everything_from_ten_threads_succeeds_for_all(buyer, fund):
    # The twins that get the locks after the first one find no money left, and must still
    # answer with the first transaction rather than InsufficientFunds.
    fund(buyer.org.id, 1_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)

    def post(i: int):
        with transaction.atomic():
            return ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(available, fees, 1_000_000),
                reference="spend all",
                idempotency_key="spend-all",
            ).pk

    results = _race(10, post)

    assert all(isinstance(result, int) for result in results), results
    assert len(set(results)) == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert ledger_check() == []


def test_one_hold_reference_from_ten_threads_places_one_hold(buyer, fund):
    fund(buyer.org.id, 50_000_000)

    def place(i: int):
        with transaction.atomic():
            return hold_place(org_id=buyer.org.id, amount_micro=5_000_000, reference="order:7").pk

    results = _race(10, place)

    assert all(isinstance(result, int) for result in results), results
    assert len(set(results)) == 1
    assert Hold.objects.count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 5_000_000
    assert ledger_check() == []


def test_concurrent_captures_never_take_more_than_the_hold(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=10_000_000, reference="order:1")
    earned = org_account(org_id=provider.org.id, kind=Kind.EARNED)

    def capture(i: int):
        with transaction.atomic():
            return hold_capture(
                reference="order:1",
                postings=[Posting(earned.id, 2_000_000)],
                capture_key=f"fill-{i}",
            )

    results = _race(10, capture)

    assert _kinds(results) == {"Hold": 5, "HoldExceeded": 5}, results
    assert all(isinstance(r, Hold | HoldExceeded) for r in results)
    hold = Hold.objects.get()
    assert (hold.captured_micro, hold.status) == (10_000_000, Hold.Status.CLOSED)
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert account_balance(org_id=provider.org.id, kind=Kind.EARNED) == 10_000_000
    assert ledger_check() == []


def test_ten_threads_releasing_one_hold_release_it_once(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=4_000_000, reference="order:1")

    def release(i: int):
        with transaction.atomic():
            return hold_release(reference="order:1").status

    results = _race(10, release)

    assert results == [Hold.Status.CLOSED] * 10
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.HOLD_RELEASE).count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 10_000_000
    assert ledger_check() == []


def test_transfers_in_opposite_directions_do_not_deadlock(buyer, provider, fund):
    fund(buyer.org.id, 50_000_000)
    fund(provider.org.id, 50_000_000)
    a = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    b = org_account(org_id=provider.org.id, kind=Kind.AVAILABLE)
    # Without the ascending-id lock order, half of these would lock b then a.
    rounds = 25

    def move(i: int):
        source, destination = (a, b) if i % 2 else (b, a)
        for n in range(rounds):
            with transaction.atomic():
                ledger_post(
                    kind=LedgerTransaction.Kind.TRANSFER,
                    postings=transfer(source, destination, 1_000 + i),
                    reference=f"ping-pong:{i}:{n}",
                )
        return "done"

    results = _race(8, move)

    assert results == ["done"] * 8
    moved_to_b = sum(rounds * (1_000 + i) for i in range(8) if i % 2)
    moved_to_a = sum(rounds * (1_000 + i) for i in range(8) if not i % 2)
    assert account_balance(org_id=provider.org.id, kind=Kind.AVAILABLE) == (
        50_000_000 + moved_to_b - moved_to_a
    )
    assert ledger_check() == []


def test_holds_and_releases_racing_on_one_org_keep_held_equal_to_open_holds(buyer, fund):
    fund(buyer.org.id, 30_000_000)
    with transaction.atomic():
        for i in range(5):
            hold_place(org_id=buyer.org.id, amount_micro=2_000_000, reference=f"old:{i}")

    def churn(i: int):
        with transaction.atomic():
            if i % 2:
                return hold_release(reference=f"old:{i // 2}").status
            return hold_place(org_id=buyer.org.id, amount_micro=3_000_000, reference=f"new:{i}")

    results = _race(10, churn)

    assert not [r for r in results if isinstance(r, Exception)], results
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 5 * 3_000_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 15_000_000
    assert ledger_check() == []


def test_a_refused_hold_in_a_race_writes_nothing(buyer, fund):
    fund(buyer.org.id, 5_000_000)

    def place(i: int):
        with transaction.atomic():
            return hold_place(org_id=buyer.org.id, amount_micro=5_000_000, reference=f"bid:{i}")

    results = _race(6, place)

    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert len(refused) == 5
    assert Hold.objects.count() == 1
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.HOLD).count() == 1
    assert ledger_check() == []
