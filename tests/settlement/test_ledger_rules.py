"""ledger_post, holds and adjustments: one rule per test."""

import pytest
from django.db import transaction

from core.errors import InsufficientFunds, PermissionDenied, ValidationFailed
from settlement.errors import AdjustmentNotAllowed, HoldExceeded, UnbalancedTransaction
from settlement.models import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.selectors import account_balance
from settlement.services import (
    Posting,
    hold_capture,
    hold_place,
    hold_release,
    ledger_adjust,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db


def _available(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.AVAILABLE)


def _held(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.HELD)


def test_a_transfer_writes_balanced_entries_with_running_balances(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    with transaction.atomic():
        txn = ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.FEES),
                3_000_000,
            ),
            reference="test",
        )
    entries = {e.account.kind: e for e in txn.entries.select_related("account")}
    assert entries["available"].amount_micro == -3_000_000
    assert entries["available"].balance_after_micro == 7_000_000
    assert entries["fees"].amount_micro == 3_000_000
    assert sum(e.amount_micro for e in entries.values()) == 0
    assert _available(buyer.org.id) == 7_000_000
    assert ledger_check() == []


def test_postings_that_do_not_sum_to_zero_are_refused(buyer):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)
    with pytest.raises(UnbalancedTransaction), transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=[Posting(available.id, 5), Posting(fees.id, -4)],
            reference="test",
        )
    assert LedgerTransaction.objects.count() == 0


def test_a_single_leg_transaction_is_refused(buyer):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(UnbalancedTransaction), transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=[Posting(available.id, 5), Posting(available.id, -5)],
            reference="test",
        )


@pytest.mark.django_db(transaction=True)
def test_ledger_post_refuses_to_run_outside_a_transaction(buyer, fund):
    fund(buyer.org.id, 5)
    with pytest.raises(RuntimeError):
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.FEES),
                5,
            ),
            reference="test",
        )
    assert _available(buyer.org.id) == 5


def test_overspending_writes_nothing(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    before = LedgerEntry.objects.count()
    with pytest.raises(InsufficientFunds), transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.FEES),
                1_000_001,
            ),
            reference="test",
        )
    assert LedgerEntry.objects.count() == before
    assert _available(buyer.org.id) == 1_000_000


def test_the_same_idempotency_key_returns_the_first_transaction(buyer, fund):
    fund(buyer.org.id, 5_000_000)
    postings = transfer(
        org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE), platform_account(kind=Kind.FEES), 1
    )
    with transaction.atomic():
        first = ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=postings,
            reference="t",
            idempotency_key="k1",
        )
    with transaction.atomic():
        second = ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=postings,
            reference="t",
            idempotency_key="k1",
        )
    assert first.id == second.id
    assert _available(buyer.org.id) == 4_999_999


def test_stripe_clearing_may_go_negative_but_fees_may_not(buyer, fund):
    fund(buyer.org.id, 5_000_000)
    assert platform_account(kind=Kind.STRIPE_CLEARING).balance_micro == -5_000_000
    with pytest.raises(InsufficientFunds), transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=Kind.FEES),
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                1,
            ),
            reference="test",
        )


def test_a_hold_moves_available_to_held(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    with transaction.atomic():
        hold = hold_place(org_id=buyer.org.id, amount_micro=4_000_000, reference="order:1")
    assert hold.status == Hold.Status.OPEN
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (6_000_000, 4_000_000)
    assert ledger_check() == []


def test_a_hold_beyond_the_balance_is_refused_and_changes_nothing(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(InsufficientFunds), transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=2_000_000, reference="order:1")
    assert not Hold.objects.exists()
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (1_000_000, 0)


def test_placing_the_same_hold_again_returns_it_once(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    for _ in range(2):
        with transaction.atomic():
            hold_place(org_id=buyer.org.id, amount_micro=4_000_000, reference="order:1")
    assert Hold.objects.count() == 1
    assert _held(buyer.org.id) == 4_000_000


def test_capture_part_then_release_the_rest_closes_the_hold(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    fees = platform_account(kind=Kind.FEES)
    earned = org_account(org_id=provider.org.id, kind=Kind.EARNED)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=4_000_000, reference="order:1")
        hold_capture(
            reference="order:1",
            postings=[Posting(earned.id, 2_500_000), Posting(fees.id, 100_000)],
            capture_key="fill-1",
        )
        hold = hold_release(reference="order:1")
    assert hold.status == Hold.Status.CLOSED
    assert (hold.captured_micro, hold.released_micro) == (2_600_000, 1_400_000)
    assert _available(buyer.org.id) == 7_400_000
    assert _held(buyer.org.id) == 0
    assert account_balance(org_id=provider.org.id, kind=Kind.EARNED) == 2_500_000
    assert ledger_check() == []


def test_a_capture_is_applied_once_per_capture_key(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    earned = org_account(org_id=provider.org.id, kind=Kind.EARNED)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=4_000_000, reference="order:1")
    for _ in range(2):
        with transaction.atomic():
            hold_capture(
                reference="order:1", postings=[Posting(earned.id, 1_000_000)], capture_key="fill-1"
            )
    assert Hold.objects.get().captured_micro == 1_000_000
    assert _held(buyer.org.id) == 3_000_000


def test_capturing_more_than_remains_is_refused(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    earned = org_account(org_id=provider.org.id, kind=Kind.EARNED)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=1_000_000, reference="order:1")
    with pytest.raises(HoldExceeded), transaction.atomic():
        hold_capture(
            reference="order:1", postings=[Posting(earned.id, 1_000_001)], capture_key="too-much"
        )
    assert _held(buyer.org.id) == 1_000_000


def test_releasing_a_closed_hold_changes_nothing(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    with transaction.atomic():
        hold_place(org_id=buyer.org.id, amount_micro=1_000_000, reference="order:1")
    for _ in range(3):
        with transaction.atomic():
            hold_release(reference="order:1")
    assert _available(buyer.org.id) == 10_000_000
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.HOLD_RELEASE).count() == 1


def test_staff_adjustment_credits_with_reason_and_actor(buyer, staff):
    txn = ledger_adjust(
        org=buyer.org,
        account_kind=Kind.AVAILABLE,
        amount_micro=2_000_000,
        reason="goodwill credit for outage #12",
        actor=staff,
        idempotency_key="adj-1",
    )
    assert (txn.actor, txn.reason) == (staff, "goodwill credit for outage #12")
    assert _available(buyer.org.id) == 2_000_000
    assert platform_account(kind=Kind.ADJUSTMENTS).balance_micro == -2_000_000
    assert ledger_check() == []


def test_adjustments_need_staff_a_reason_and_an_adjustable_account(buyer, staff):
    buyer_user = buyer.user
    with pytest.raises(PermissionDenied):
        ledger_adjust(
            org=buyer.org,
            account_kind=Kind.AVAILABLE,
            amount_micro=1,
            reason="x",
            actor=buyer_user,
            idempotency_key="a",
        )
    with pytest.raises(ValidationFailed):
        ledger_adjust(
            org=buyer.org,
            account_kind=Kind.AVAILABLE,
            amount_micro=1,
            reason="  ",
            actor=staff,
            idempotency_key="b",
        )
    with pytest.raises(AdjustmentNotAllowed):
        ledger_adjust(
            org=buyer.org,
            account_kind=Kind.HELD,
            amount_micro=1,
            reason="x",
            actor=staff,
            idempotency_key="c",
        )
    assert LedgerTransaction.objects.count() == 0


def test_a_debit_adjustment_cannot_take_a_balance_below_zero(buyer, staff, fund):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(InsufficientFunds):
        ledger_adjust(
            org=buyer.org,
            account_kind=Kind.AVAILABLE,
            amount_micro=-1_000_001,
            reason="chargeback",
            actor=staff,
            idempotency_key="d",
        )
    assert _available(buyer.org.id) == 1_000_000
