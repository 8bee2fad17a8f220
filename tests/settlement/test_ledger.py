"""ledger_post, ledger_post_durable and ledger_adjust: one rule per test, SQLite and PostgreSQL."""

from decimal import Decimal

import pytest
from django.db import transaction
from django.db.models import Sum

from core.errors import InsufficientFunds, PermissionDenied, ValidationFailed
from settlement.errors import AdjustmentNotAllowed, UnbalancedTransaction
from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.selectors import account_balance
from settlement.services import (
    Posting,
    ledger_adjust,
    ledger_check,
    ledger_post,
    ledger_post_durable,
    org_account,
    platform_account,
    transfer,
)

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db


def _post(postings, *, key=None, **extra) -> LedgerTransaction:
    with transaction.atomic():
        return ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=postings,
            reference="test",
            idempotency_key=key,
            **extra,
        )


def _balance(account: LedgerAccount) -> int:
    account.refresh_from_db()
    return account.balance_micro


def test_a_transfer_moves_money_and_writes_balanced_entries_with_balance_after(
    buyer, provider, fund
):
    fund(buyer.org.id, 10_000_000)
    source = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    destination = org_account(org_id=provider.org.id, kind=Kind.AVAILABLE)

    txn = _post(transfer(source, destination, 3_000_000))

    entries = {entry.account_id: entry for entry in LedgerEntry.objects.filter(transaction=txn)}
    assert set(entries) == {source.id, destination.id}
    assert (entries[source.id].amount_micro, entries[source.id].balance_after_micro) == (
        -3_000_000,
        7_000_000,
    )
    assert (
        entries[destination.id].amount_micro,
        entries[destination.id].balance_after_micro,
    ) == (3_000_000, 3_000_000)
    assert (_balance(source), _balance(destination)) == (7_000_000, 3_000_000)
    assert ledger_check() == []


def test_the_returned_transaction_is_the_stored_row(buyer, fund, staff):
    fund(buyer.org.id, 1_000_000)
    txn = _post(
        transfer(
            org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
            platform_account(kind=Kind.FEES),
            1_000,
        ),
        key="k-returned",
        actor=staff,
        reason="a fee by hand",
    )
    stored = LedgerTransaction.objects.get(pk=txn.pk)
    assert (txn.kind, txn.reference, txn.idempotency_key, txn.actor_id, txn.reason) == (
        stored.kind,
        stored.reference,
        stored.idempotency_key,
        stored.actor_id,
        stored.reason,
    )
    assert txn.created_at == stored.created_at
    assert stored.entries.count() == 2


def test_postings_that_do_not_sum_to_zero_are_refused_and_write_nothing(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)
    transactions_before = LedgerTransaction.objects.count()

    with pytest.raises(UnbalancedTransaction):
        _post([Posting(available.id, -5), Posting(fees.id, 4)])

    assert LedgerTransaction.objects.count() == transactions_before
    assert (_balance(available), _balance(fees)) == (10_000_000, 0)


def test_a_single_leg_transaction_is_refused(buyer):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(UnbalancedTransaction):
        _post([Posting(available.id, 5), Posting(available.id, -5)])
    assert not LedgerTransaction.objects.exists()


def test_a_transaction_of_zero_postings_is_refused(buyer):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)
    with pytest.raises(UnbalancedTransaction):
        _post([Posting(available.id, 0), Posting(fees.id, 0)])
    assert not LedgerTransaction.objects.exists()


def test_postings_to_one_account_are_netted_into_one_entry(buyer, provider, fund):
    fund(buyer.org.id, 10_000_000)
    source = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    destination = org_account(org_id=provider.org.id, kind=Kind.EARNED)

    txn = _post(
        [
            Posting(source.id, -1_000),
            Posting(source.id, -2_000),
            Posting(destination.id, 3_000),
        ]
    )

    assert sorted(txn.entries.values_list("amount_micro", flat=True)) == [-3_000, 3_000]
    assert _balance(source) == 9_997_000


def test_money_must_be_an_int(buyer):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)
    for amount in (Decimal("1"), 1.0, True):
        with pytest.raises(TypeError):
            _post([Posting(available.id, -amount), Posting(fees.id, amount)])
    assert not LedgerTransaction.objects.exists()


def test_an_unknown_account_is_refused(buyer, fund):
    fund(buyer.org.id, 1_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(ValueError, match="unknown ledger accounts"):
        _post([Posting(available.id, -1_000), Posting(10**9, 1_000)])
    assert _balance(available) == 1_000


def test_accounts_in_two_currencies_are_refused(buyer, fund):
    fund(buyer.org.id, 1_000)
    usd = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    eur = org_account(org_id=buyer.org.id, kind=Kind.EARNED, currency="EUR")
    with pytest.raises(UnbalancedTransaction, match="currency"):
        _post(transfer(usd, eur, 1_000))
    assert (_balance(usd), _balance(eur)) == (1_000, 0)


def test_insufficient_funds_are_refused_with_nothing_written(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    entries_before = LedgerEntry.objects.count()

    with pytest.raises(InsufficientFunds) as refused:
        _post(transfer(available, platform_account(kind=Kind.FEES), 1_000_001))

    assert refused.value.code == "insufficient_funds"
    assert refused.value.extra == {"account_kind": Kind.AVAILABLE}
    assert LedgerEntry.objects.count() == entries_before
    assert _balance(available) == 1_000_000
    assert ledger_check() == []


def test_spending_the_whole_balance_leaves_exactly_zero(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    _post(transfer(available, platform_account(kind=Kind.FEES), 1_000_000))
    assert _balance(available) == 0


def test_a_refused_post_leaves_the_callers_transaction_usable(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)

    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(available, fees, 400_000),
            reference="first",
        )
        with pytest.raises(InsufficientFunds):
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(available, fees, 700_000),
                reference="too much",
            )
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(available, fees, 600_000),
            reference="the rest",
        )

    assert (_balance(available), _balance(fees)) == (0, 1_000_000)
    assert not LedgerTransaction.objects.filter(reference="too much").exists()
    assert ledger_check() == []


def test_the_same_idempotency_key_returns_the_first_transaction(buyer, fund):
    fund(buyer.org.id, 5_000_000)
    postings = transfer(
        org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
        platform_account(kind=Kind.FEES),
        1_000_000,
    )

    first = _post(postings, key="k1")
    second = _post(postings, key="k1")

    assert second.pk == first.pk
    assert LedgerTransaction.objects.filter(idempotency_key="k1").count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 4_000_000


def test_a_retry_succeeds_after_its_first_attempt_spent_the_money(buyer, fund):
    fund(buyer.org.id, 1_000_000)
    postings = transfer(
        org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
        platform_account(kind=Kind.FEES),
        1_000_000,
    )
    first = _post(postings, key="spend-all")
    assert _post(postings, key="spend-all").pk == first.pk
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0


def test_a_key_reused_with_other_postings_still_returns_the_first_transaction(
    buyer, provider, fund
):
    fund(buyer.org.id, 5_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    first = _post(transfer(available, platform_account(kind=Kind.FEES), 1_000), key="k2")
    other = org_account(org_id=provider.org.id, kind=Kind.AVAILABLE)

    assert _post(transfer(available, other, 2_000), key="k2").pk == first.pk
    assert (_balance(available), _balance(other)) == (4_999_000, 0)


@pytest.mark.parametrize("kind", sorted(LedgerAccount.SIGNED_KINDS))
def test_signed_platform_accounts_may_go_negative(buyer, kind):
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    signed = platform_account(kind=kind)
    _post(transfer(signed, available, 2_500_000))
    assert _balance(signed) == -2_500_000
    assert _balance(available) == 2_500_000
    assert ledger_check() == []


@pytest.mark.parametrize(
    "kind",
    sorted((LedgerAccount.ORG_KINDS | LedgerAccount.PLATFORM_KINDS) - LedgerAccount.SIGNED_KINDS),
)
def test_other_accounts_may_not_go_negative(buyer, kind):
    if kind in LedgerAccount.ORG_KINDS:
        source = org_account(org_id=buyer.org.id, kind=kind)
        destination = platform_account(kind=Kind.ADJUSTMENTS)
    else:
        source = platform_account(kind=kind)
        destination = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(InsufficientFunds):
        _post(transfer(source, destination, 1))
    assert _balance(source) == 0


def _post_durable(postings, *, key=None) -> LedgerTransaction:
    return ledger_post_durable(
        kind=LedgerTransaction.Kind.TRANSFER,
        postings=postings,
        reference="durable",
        idempotency_key=key,
    )


# Committing tests: outside a test's own transaction, PostgreSQL takes the one-statement path.
@pytest.mark.django_db(transaction=True)
def test_a_durable_post_commits_by_itself_and_a_retry_returns_it(buyer, fund):
    fund(buyer.org.id, 5_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    fees = platform_account(kind=Kind.FEES)

    first = _post_durable(transfer(available, fees, 1_000_000), key="durable-1")
    again = _post_durable(transfer(available, fees, 1_000_000), key="durable-1")

    assert again.pk == first.pk
    assert first == LedgerTransaction.objects.get(reference="durable")
    assert sorted(first.entries.values_list("amount_micro", "balance_after_micro")) == [
        (-1_000_000, 4_000_000),
        (1_000_000, 1_000_000),
    ]
    assert (_balance(available), _balance(fees)) == (4_000_000, 1_000_000)
    assert ledger_check() == []


@pytest.mark.django_db(transaction=True)
def test_a_durable_post_refused_for_funds_writes_nothing(buyer, fund):
    fund(buyer.org.id, 999)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(InsufficientFunds):
        _post_durable(transfer(available, platform_account(kind=Kind.FEES), 1_000), key="d-2")
    assert _balance(available) == 999
    assert not LedgerTransaction.objects.filter(reference="durable").exists()
    with pytest.raises(UnbalancedTransaction):
        _post_durable([Posting(available.id, -5)])
    assert ledger_check() == []


@pytest.mark.django_db(transaction=True)
def test_a_durable_post_refuses_to_run_inside_a_transaction(buyer, fund):
    fund(buyer.org.id, 5)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    with pytest.raises(RuntimeError, match="durable"), transaction.atomic():
        _post_durable(transfer(available, platform_account(kind=Kind.FEES), 5))
    assert _balance(available) == 5


@pytest.mark.django_db(transaction=True)
def test_ledger_post_refuses_to_run_outside_a_transaction(buyer, fund):
    fund(buyer.org.id, 5)
    with pytest.raises(RuntimeError, match="inside the caller's transaction"):
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
                platform_account(kind=Kind.FEES),
                5,
            ),
            reference="test",
        )
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 5


def test_org_account_is_created_once_and_only_for_org_kinds(buyer):
    first = org_account(org_id=buyer.org.id, kind=Kind.HELD)
    assert org_account(org_id=buyer.org.id, kind=Kind.HELD).pk == first.pk
    with pytest.raises(ValueError):
        org_account(org_id=buyer.org.id, kind=Kind.FEES)
    with pytest.raises(ValueError):
        platform_account(kind=Kind.AVAILABLE)


# ledger_adjust


def _adjust(org, actor, amount_micro, *, kind=Kind.AVAILABLE, reason="goodwill", key="adj-1"):
    return ledger_adjust(
        org=org,
        account_kind=kind,
        amount_micro=amount_micro,
        reason=reason,
        actor=actor,
        idempotency_key=key,
    )


def test_a_staff_credit_keeps_the_reason_and_the_actor(buyer, staff):
    txn = _adjust(buyer.org, staff, 2_000_000, reason="  credit for outage #12  ")

    assert (txn.kind, txn.actor_id, txn.reason) == (
        LedgerTransaction.Kind.ADJUSTMENT,
        staff.id,
        "credit for outage #12",
    )
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 2_000_000
    assert platform_account(kind=Kind.ADJUSTMENTS).balance_micro == -2_000_000
    assert ledger_check() == []


def test_a_staff_debit_takes_money_back_into_adjustments(buyer, staff, fund):
    fund(buyer.org.id, 5_000_000)
    _adjust(buyer.org, staff, -1_500_000, reason="duplicate credit")
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 3_500_000
    assert platform_account(kind=Kind.ADJUSTMENTS).balance_micro == 1_500_000
    assert ledger_check() == []


def test_earned_can_be_adjusted(provider, staff):
    _adjust(provider.org, staff, 750_000, kind=Kind.EARNED)
    assert account_balance(org_id=provider.org.id, kind=Kind.EARNED) == 750_000


def test_only_staff_make_adjustments(buyer):
    with pytest.raises(PermissionDenied):
        _adjust(buyer.org, buyer.user, 1_000)
    assert not LedgerTransaction.objects.exists()


@pytest.mark.parametrize("reason", ["", "   "])
def test_an_adjustment_needs_a_reason(buyer, staff, reason):
    with pytest.raises(ValidationFailed) as refused:
        _adjust(buyer.org, staff, 1_000, reason=reason)
    assert "reason" in refused.value.fields
    assert not LedgerTransaction.objects.exists()


@pytest.mark.parametrize("kind", [Kind.HELD, Kind.ESCROW, Kind.PAYOUT_PENDING])
def test_only_available_and_earned_can_be_adjusted(buyer, staff, kind):
    with pytest.raises(AdjustmentNotAllowed):
        _adjust(buyer.org, staff, 1_000, kind=kind)
    assert not LedgerTransaction.objects.exists()


def test_a_zero_adjustment_is_refused(buyer, staff):
    with pytest.raises(ValidationFailed):
        _adjust(buyer.org, staff, 0)
    assert not LedgerTransaction.objects.exists()


def test_a_debit_adjustment_cannot_take_a_balance_below_zero(buyer, staff, fund):
    fund(buyer.org.id, 1_000_000)
    with pytest.raises(InsufficientFunds):
        _adjust(buyer.org, staff, -1_000_001, reason="chargeback")
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000
    assert not LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.ADJUSTMENT).exists()


def test_an_adjustment_retried_with_its_key_applies_once(buyer, staff):
    first = _adjust(buyer.org, staff, 1_000_000, key="form-token-1")
    again = _adjust(buyer.org, staff, 1_000_000, key="form-token-1")
    assert again.pk == first.pk
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 1_000_000


def test_every_balance_sums_to_zero_after_a_mix_of_postings(buyer, provider, staff, fund):
    fund(buyer.org.id, 9_000_000)
    _post(
        transfer(
            org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE),
            org_account(org_id=provider.org.id, kind=Kind.EARNED),
            4_000_000,
        )
    )
    _adjust(provider.org, staff, -1_000_000, kind=Kind.EARNED, reason="fee correction")
    assert LedgerAccount.objects.aggregate(total=Sum("balance_micro"))["total"] == 0
    assert ledger_check() == []


@pytest.mark.postgres
def test_the_posting_statement_is_prepared_on_the_server_and_stays_right(buyer, provider, fund):
    """After the connection's prepare threshold, PostgreSQL runs the post from its plan cache."""
    from django.conf import settings
    from django.db import connection

    fund(buyer.org.id, 10_000_000)
    available = org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE)
    earned = org_account(org_id=provider.org.id, kind=Kind.EARNED)
    runs = settings.DATABASES["default"]["OPTIONS"]["prepare_threshold"] + 2
    for index in range(runs):
        _post(transfer(available, earned, 1_000_000), key=f"prepared-{index}")
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_prepared_statements"
            " WHERE statement LIKE '%%locked AS MATERIALIZED%%'"
        )
        assert cursor.fetchone()[0] == 1
    # The prepared plan refuses an overdraft as the first runs did, and a retry writes nothing.
    with pytest.raises(InsufficientFunds):
        _post(transfer(available, earned, 5_000_000), key="prepared-overdraft")
    again = _post(transfer(available, earned, 1_000_000), key="prepared-0")
    assert again.idempotency_key == "prepared-0"
    assert _balance(available) == 10_000_000 - runs * 1_000_000
    assert ledger_check() == []
