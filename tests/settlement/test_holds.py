"""Holds: place, capture part, release the rest, close; one rule per test."""

import pytest
from django.db import transaction
from django.db.models import F, Sum

from core.errors import Conflict, InsufficientFunds, ValidationFailed
from settlement.errors import HoldExceeded, HoldNotFound
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.selectors import account_balance
from settlement.services import (
    HoldCapture,
    Posting,
    hold_capture,
    hold_place,
    hold_release,
    holds_capture_batch,
    ledger_check,
    org_account,
    platform_account,
)

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db


def _available(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.AVAILABLE)


def _held(org_id: int) -> int:
    return account_balance(org_id=org_id, kind=Kind.HELD)


def _open_holds_total(org_id: int) -> int:
    return (
        Hold.objects.filter(org_id=org_id, status=Hold.Status.OPEN).aggregate(
            left=Sum(F("amount_micro") - F("captured_micro") - F("released_micro"))
        )["left"]
        or 0
    )


def _place(org_id: int, amount_micro: int, reference: str = "order:1") -> Hold:
    with transaction.atomic():
        return hold_place(org_id=org_id, amount_micro=amount_micro, reference=reference)


def _capture(postings, *, key: str, reference: str = "order:1") -> Hold:
    with transaction.atomic():
        return hold_capture(reference=reference, postings=postings, capture_key=key)


def _release(amount_micro: int | None = None, reference: str = "order:1") -> Hold:
    with transaction.atomic():
        return hold_release(reference=reference, amount_micro=amount_micro)


@pytest.fixture
def earned(provider) -> LedgerAccount:
    return org_account(org_id=provider.org.id, kind=Kind.EARNED)


@pytest.fixture
def fees() -> LedgerAccount:
    return platform_account(kind=Kind.FEES)


def test_placing_a_hold_moves_available_to_held(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    hold = _place(buyer.org.id, 4_000_000)

    assert (hold.status, hold.remaining_micro) == (Hold.Status.OPEN, 4_000_000)
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (6_000_000, 4_000_000)
    txn = LedgerTransaction.objects.get(idempotency_key="hold:order:1")
    assert (txn.kind, txn.reference) == (LedgerTransaction.Kind.HOLD, "order:1")
    assert ledger_check() == []


def test_a_hold_beyond_available_is_refused_and_leaves_no_trace(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(InsufficientFunds):
        _place(buyer.org.id, 1_000_001)
    assert not Hold.objects.exists()
    assert not LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.HOLD).exists()
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (1_000_000, 0)


@pytest.mark.parametrize("amount", [0, -1])
def test_a_hold_must_be_positive(buyer, fund, amount):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(ValidationFailed):
        _place(buyer.org.id, amount)
    assert not Hold.objects.exists()


def test_placing_a_hold_again_returns_the_same_hold(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    first = _place(buyer.org.id, 4_000_000)
    again = _place(buyer.org.id, 4_000_000)

    assert again.pk == first.pk
    assert Hold.objects.count() == 1
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.HOLD).count() == 1
    assert _held(buyer.org.id) == 4_000_000


def test_the_same_reference_with_another_amount_is_a_conflict(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)
    with pytest.raises(Conflict):
        _place(buyer.org.id, 2_000_000)
    assert _held(buyer.org.id) == 4_000_000


def test_the_same_reference_for_another_org_is_a_conflict(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    fund(provider.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)
    with pytest.raises(Conflict):
        _place(provider.org.id, 4_000_000)
    assert (_held(provider.org.id), _available(provider.org.id)) == (0, 10_000_000)


def test_capturing_part_pays_the_payees_out_of_held(buyer, fund, earned, fees):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)

    hold = _capture([Posting(earned.id, 2_500_000), Posting(fees.id, 100_000)], key="fill-1")

    assert (hold.captured_micro, hold.remaining_micro, hold.status) == (
        2_600_000,
        1_400_000,
        Hold.Status.OPEN,
    )
    assert _held(buyer.org.id) == 1_400_000
    assert _available(buyer.org.id) == 6_000_000
    earned.refresh_from_db()
    fees.refresh_from_db()
    assert (earned.balance_micro, fees.balance_micro) == (2_500_000, 100_000)
    assert ledger_check() == []


def test_capture_part_then_release_the_rest_closes_the_hold(buyer, fund, earned, fees):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)
    _capture([Posting(earned.id, 2_500_000), Posting(fees.id, 100_000)], key="fill-1")

    hold = _release()

    assert hold.status == Hold.Status.CLOSED
    assert hold.closed_at is not None
    assert (hold.captured_micro, hold.released_micro) == (2_600_000, 1_400_000)
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (7_400_000, 0)
    assert ledger_check() == []


def test_captures_that_spend_the_whole_hold_close_it(buyer, fund, earned):
    fund(buyer.org.id, 1_000_000)
    _place(buyer.org.id, 1_000_000)
    _capture([Posting(earned.id, 400_000)], key="a")
    hold = _capture([Posting(earned.id, 600_000)], key="b")
    assert (hold.status, hold.remaining_micro) == (Hold.Status.CLOSED, 0)
    assert _held(buyer.org.id) == 0
    assert ledger_check() == []


def test_capturing_more_than_remains_is_refused(buyer, fund, earned):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 1_000_000)
    _capture([Posting(earned.id, 600_000)], key="a")

    with pytest.raises(HoldExceeded):
        _capture([Posting(earned.id, 400_001)], key="b")

    assert Hold.objects.get().captured_micro == 600_000
    assert _held(buyer.org.id) == 400_000
    assert ledger_check() == []


def test_capturing_from_a_closed_hold_is_refused(buyer, fund, earned):
    fund(buyer.org.id, 1_000_000)
    _place(buyer.org.id, 1_000_000)
    _release()
    with pytest.raises(HoldExceeded):
        _capture([Posting(earned.id, 1)], key="late")
    assert _available(buyer.org.id) == 1_000_000


def test_a_capture_retried_with_its_key_applies_once(buyer, fund, earned):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)
    for _ in range(3):
        hold = _capture([Posting(earned.id, 1_000_000)], key="fill-1")
    assert hold.captured_micro == 1_000_000
    assert _held(buyer.org.id) == 3_000_000
    assert ledger_check() == []


@pytest.mark.parametrize("amounts", [[], [0], [-5, 10], [5, 0]])
def test_a_capture_pays_positive_amounts_only(buyer, fund, earned, fees, amounts):
    fund(buyer.org.id, 1_000_000)
    _place(buyer.org.id, 1_000_000)
    payees = [earned, fees]
    with pytest.raises(ValidationFailed):
        _capture([Posting(payees[i].id, a) for i, a in enumerate(amounts)], key="bad")
    assert _held(buyer.org.id) == 1_000_000


def test_a_capture_cannot_pay_into_the_holds_own_held_account(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    _place(buyer.org.id, 1_000_000)
    held = org_account(org_id=buyer.org.id, kind=Kind.HELD)
    with pytest.raises(ValidationFailed):
        _capture([Posting(held.id, 1_000)], key="loop")
    assert Hold.objects.get().captured_micro == 0


def test_releasing_part_keeps_the_hold_open(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)
    hold = _release(1_000_000)
    assert (hold.status, hold.released_micro) == (Hold.Status.OPEN, 1_000_000)
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (7_000_000, 3_000_000)
    assert ledger_check() == []


def test_two_partial_releases_of_the_same_amount_both_release(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 4_000_000)
    _release(1_000_000)
    hold = _release(1_000_000)
    assert hold.released_micro == 2_000_000
    assert (_available(buyer.org.id), _held(buyer.org.id)) == (8_000_000, 2_000_000)
    assert ledger_check() == []


def test_releasing_is_idempotent(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 1_000_000)
    for _ in range(3):
        hold = _release()
    assert hold.status == Hold.Status.CLOSED
    assert _available(buyer.org.id) == 10_000_000
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.HOLD_RELEASE).count() == 1
    assert ledger_check() == []


def test_releasing_more_than_remains_is_refused(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 1_000_000)
    with pytest.raises(HoldExceeded):
        _release(1_000_001)
    assert _held(buyer.org.id) == 1_000_000


def test_a_negative_release_is_refused(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 1_000_000)
    with pytest.raises(ValidationFailed):
        _release(-1)
    assert _held(buyer.org.id) == 1_000_000


def test_unknown_holds_are_not_found(earned):
    with pytest.raises(HoldNotFound):
        _release(reference="order:404")
    with pytest.raises(HoldNotFound):
        _capture([Posting(earned.id, 1)], key="x", reference="order:404")


def test_held_equals_the_open_holds_after_a_mix_of_operations(buyer, fund, earned, fees):
    fund(buyer.org.id, 50_000_000)
    _place(buyer.org.id, 10_000_000, "bid:1")
    _place(buyer.org.id, 7_000_000, "bid:2")
    _place(buyer.org.id, 3_000_000, "bid:3")
    _capture([Posting(earned.id, 4_000_000)], key="f1", reference="bid:1")
    _release(2_000_000, reference="bid:2")
    _capture([Posting(fees.id, 3_000_000)], key="f2", reference="bid:3")
    _release(reference="bid:1")

    assert _held(buyer.org.id) == _open_holds_total(buyer.org.id) == 5_000_000
    assert _available(buyer.org.id) == 50_000_000 - 20_000_000 + 2_000_000 + 6_000_000
    assert ledger_check() == []


def _batch(captures) -> int:
    with transaction.atomic():
        return holds_capture_batch(captures=captures)


def test_a_batch_captures_many_holds_once_each(buyer, fund, earned, fees):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 3_000_000, reference="relay:a")
    _place(buyer.org.id, 2_000_000, reference="relay:b")
    captures = [
        HoldCapture("relay:a", [Posting(earned.id, 2_900_000), Posting(fees.id, 100_000)], "s"),
        HoldCapture("relay:b", [Posting(earned.id, 1_500_000)], "s"),
    ]

    assert _batch(captures) == 2
    assert _batch(captures) == 0  # a retry books nothing twice
    # The single-hold path uses the same key, so it too sees the capture as done.
    assert _capture([Posting(earned.id, 1)], key="s", reference="relay:a").captured_micro == (
        3_000_000
    )

    a, b = Hold.objects.get(reference="relay:a"), Hold.objects.get(reference="relay:b")
    assert (a.status, a.captured_micro) == (Hold.Status.CLOSED, 3_000_000)
    assert (b.status, b.remaining_micro) == (Hold.Status.OPEN, 500_000)
    assert _held(buyer.org.id) == 500_000 == _open_holds_total(buyer.org.id)
    assert account_balance(org_id=earned.org_id, kind=Kind.EARNED) == 4_400_000
    assert ledger_check() == []


def test_a_batch_with_one_short_hold_books_nothing(buyer, fund, earned):
    fund(buyer.org.id, 10_000_000)
    _place(buyer.org.id, 3_000_000, reference="relay:a")
    _place(buyer.org.id, 1_000_000, reference="relay:b")
    captures = [
        HoldCapture("relay:a", [Posting(earned.id, 3_000_000)], "s"),
        HoldCapture("relay:b", [Posting(earned.id, 1_000_001)], "s"),
    ]

    with pytest.raises(HoldExceeded):
        _batch(captures)
    with pytest.raises(HoldNotFound):
        _batch([HoldCapture("relay:nope", [Posting(earned.id, 1)], "s")])

    assert _held(buyer.org.id) == 4_000_000 == _open_holds_total(buyer.org.id)
    assert not LedgerTransaction.objects.filter(idempotency_key__startswith="capture:").exists()
    assert ledger_check() == []
