"""`manage.py ledger_check`: silent success on a sound ledger, every breach printed otherwise.

The breaches are made the way a bug or a hand edit would make them: raw SQL on balances and
holds, or rows written around the services. Each test runs inside a transaction that is never
committed, so the PostgreSQL commit-time guards do not get a say.
"""

from io import StringIO

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction

from settlement.models import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.services import (
    Posting,
    hold_place,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db


def _run() -> tuple[str, str, CommandError | None]:
    """Run the command; return its stdout, its stderr and the CommandError it raised, if any."""
    out, err = StringIO(), StringIO()
    try:
        call_command("ledger_check", stdout=out, stderr=err)
    except CommandError as error:
        return out.getvalue(), err.getvalue(), error
    return out.getvalue(), err.getvalue(), None


def _breaches() -> list[str]:
    """The lines the command printed to stderr; it must have failed."""
    _, err, error = _run()
    assert error is not None
    assert str(error) == f"ledger_check found {len(err.splitlines())} problem(s)"
    return err.splitlines()


def _sql(statement: str, params: list) -> None:
    with connection.cursor() as cursor:
        cursor.execute(statement, params)


@pytest.fixture
def funded_with_hold(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    with transaction.atomic():
        return hold_place(org_id=buyer.org.id, amount_micro=4_000_000, reference="order:1")


def test_a_sound_ledger_passes_with_a_message(funded_with_hold):
    out, err, error = _run()
    assert error is None
    assert "all invariants hold" in out
    assert err == ""


def test_an_empty_ledger_passes():
    out, _, error = _run()
    assert error is None
    assert "all invariants hold" in out


def test_a_balance_edited_by_hand_is_reported(buyer, funded_with_hold):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    _sql(
        f"UPDATE {LedgerAccount._meta.db_table} SET balance_micro = balance_micro + 1 "
        "WHERE id = %s",
        [available.id],
    )

    lines = _breaches()

    assert lines == [f"BREACH: {problem}" for problem in ledger_check()]
    assert any(
        f"account {available.id}" in line and "6000001 but its entries sum to 6000000" in line
        for line in lines
    )
    assert any("balances sum to 1, not zero" in line for line in lines)


def test_a_hold_whose_remaining_differs_from_held_is_reported(buyer, funded_with_hold):
    _sql(
        f"UPDATE {Hold._meta.db_table} SET captured_micro = 1000 WHERE reference = %s",
        ["order:1"],
    )

    lines = _breaches()

    assert lines == [f"BREACH: org {buyer.org.id} holds 4000000 but its open holds total 3999000"]


def test_an_open_hold_with_nothing_left_is_reported(buyer, funded_with_hold):
    # Release the money without closing the hold: held and the open holds still agree (0 = 0).
    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.HOLD_RELEASE,
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.HELD),
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                4_000_000,
            ),
            reference="order:1",
        )
    _sql(
        f"UPDATE {Hold._meta.db_table} SET released_micro = amount_micro WHERE reference = %s",
        ["order:1"],
    )

    assert _breaches() == ["BREACH: hold order:1 has nothing left but is still open"]


@pytest.fixture
def without_commit_guard():
    """Switch off PostgreSQL's balanced-transaction trigger for this test's transaction only.

    Django checks deferred constraints before it rolls a test back, and that would fire it.
    """
    if connection.vendor == "postgresql":
        _sql(
            f"ALTER TABLE {LedgerEntry._meta.db_table} "
            "DISABLE TRIGGER settlement_ledgerentry_balanced",
            [],
        )


def test_an_unbalanced_transaction_is_reported(buyer, without_commit_guard):
    account = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    clearing = platform_account(kind=Kind.STRIPE_CLEARING)
    txn = LedgerTransaction.objects.create(kind="transfer", reference="by hand")
    LedgerEntry.objects.create(
        transaction=txn, account=account, amount_micro=5, balance_after_micro=5
    )
    LedgerEntry.objects.create(
        transaction=txn, account=clearing, amount_micro=-4, balance_after_micro=-4
    )
    LedgerAccount.objects.filter(pk=account.pk).update(balance_micro=5)
    LedgerAccount.objects.filter(pk=clearing.pk).update(balance_micro=-4)

    lines = _breaches()

    assert f"BREACH: transaction {txn.pk} has 2 entries summing to 1" in lines
    assert "BREACH: all USD balances sum to 1, not zero" in lines


def test_a_transaction_without_entries_is_reported():
    txn = LedgerTransaction.objects.create(kind="transfer", reference="empty")
    assert _breaches() == [f"BREACH: transaction {txn.pk} has no entries"]


def test_a_wrong_balance_after_is_reported(buyer, fund):
    fund(buyer.org.id, 1_000)
    account = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)
    txn = LedgerTransaction.objects.create(kind="transfer", reference="by hand")
    # Balanced, and the balances agree with the entries' sums; only the running balance lies.
    wrong = LedgerEntry.objects.create(
        transaction=txn, account=account, amount_micro=-400, balance_after_micro=999
    )
    LedgerEntry.objects.create(
        transaction=txn, account=fees, amount_micro=400, balance_after_micro=400
    )
    LedgerAccount.objects.filter(pk=account.pk).update(balance_micro=600)
    LedgerAccount.objects.filter(pk=fees.pk).update(balance_micro=400)

    assert _breaches() == [
        f"BREACH: entry {wrong.pk} on account {account.pk} says the balance became 999 "
        "but the entries up to it sum to 600"
    ]


def test_every_breach_is_printed_on_its_own_line(buyer, funded_with_hold):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    _sql(
        f"UPDATE {LedgerAccount._meta.db_table} SET balance_micro = 0 WHERE id = %s",
        [available.id],
    )
    _sql(
        f"UPDATE {Hold._meta.db_table} SET captured_micro = 1 WHERE reference = %s",
        ["order:1"],
    )
    problems = ledger_check()

    lines = _breaches()

    assert len(problems) >= 3
    assert lines == [f"BREACH: {problem}" for problem in problems]


def test_a_services_only_history_stays_clean(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    earned = org_account(org_id=provider.org.id, kind=Kind.EARNED)
    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=[
                Posting(org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE).id, -3_000),
                Posting(earned.id, 3_000),
            ],
            reference="pay",
        )
    out, _, error = _run()
    assert error is None
    assert "all invariants hold" in out
