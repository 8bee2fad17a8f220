"""ledger_post_many: many new transactions from columns, under ledger_post's rules."""

import pytest
from django.db import IntegrityError, transaction

from core.errors import InsufficientFunds
from settlement.errors import UnbalancedTransaction
from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.services import org_account, platform_account
from settlement.services.batch import ledger_post_many

Kind = LedgerAccount.Kind
TRADE = LedgerTransaction.Kind.TRADE.value
pytestmark = pytest.mark.django_db


@pytest.fixture
def accounts(buyer, fund):
    fund(buyer.org.id, 10_000_000)
    return (
        org_account(org_id=buyer.org.id, kind=Kind.AVAILABLE).id,
        org_account(org_id=buyer.org.id, kind=Kind.ESCROW).id,
        platform_account(kind=Kind.FEES).id,
    )


def _post(legs, *, keys=("a", "b")) -> list[int]:
    """Post `legs` ((transaction index, account id, amount), grouped) as len(keys) transactions."""
    with transaction.atomic():
        return ledger_post_many(
            kinds=[TRADE] * len(keys),
            references=[f"ref {key}" for key in keys],
            idempotency_keys=list(keys),
            leg_transactions=[leg[0] for leg in legs],
            leg_accounts=[leg[1] for leg in legs],
            leg_amounts=[leg[2] for leg in legs],
        )


def _balance(account_id: int) -> int:
    return LedgerAccount.objects.get(pk=account_id).balance_micro


def test_each_transaction_gets_its_own_legs_as_entries_with_running_balances(accounts):
    available, escrow, fees = accounts
    first, second = _post(
        [
            (0, available, -3_000),
            (0, escrow, 2_990),
            (0, fees, 10),
            (1, available, -1_000),
            (1, escrow, 1_000),
        ]
    )
    entries = list(
        LedgerEntry.objects.order_by("id").values_list(
            "transaction_id", "account_id", "amount_micro", "balance_after_micro"
        )
    )[-5:]
    assert entries == [
        (first, available, -3_000, 9_997_000),
        (first, escrow, 2_990, 2_990),
        (first, fees, 10, 10),
        (second, available, -1_000, 9_996_000),
        (second, escrow, 1_000, 3_990),
    ]
    assert LedgerTransaction.objects.get(pk=second).idempotency_key == "b"
    assert (_balance(available), _balance(escrow), _balance(fees)) == (9_996_000, 3_990, 10)


@pytest.mark.parametrize(
    "second_legs",
    [
        [(1, "available", -1_000), (1, "escrow", 999)],  # sums to -1
        [(1, "available", -1_000), (1, "available", 1_000)],  # one account only
    ],
)
def test_a_transaction_that_does_not_balance_writes_nothing(accounts, second_legs):
    available, escrow, _ = accounts
    ids = {"available": available, "escrow": escrow}
    legs = [(0, available, -5), (0, escrow, 5)]
    legs += [(index, ids[name], amount) for index, name, amount in second_legs]
    count = LedgerTransaction.objects.count()
    with pytest.raises(UnbalancedTransaction, match="ref b"):
        _post(legs)
    assert LedgerTransaction.objects.count() == count
    assert _balance(available) == 10_000_000


def test_a_leg_of_zero_or_not_an_int_is_refused(accounts):
    available, escrow, _ = accounts
    with pytest.raises(UnbalancedTransaction):
        _post([(0, available, 0), (0, escrow, 0)], keys=("a",))
    with pytest.raises(TypeError):
        _post([(0, available, -5.0), (0, escrow, 5.0)], keys=("a",))
    with pytest.raises(TypeError):
        _post([(0, available, -1), (0, escrow, True)], keys=("a",))


def test_legs_out_of_transaction_order_are_refused(accounts):
    available, escrow, _ = accounts
    with pytest.raises(ValueError, match="grouped"):
        _post([(1, available, -5), (1, escrow, 5), (0, available, -5), (0, escrow, 5)])


def test_an_account_that_would_go_negative_stops_the_whole_post(accounts):
    available, escrow, _ = accounts
    with pytest.raises(InsufficientFunds):
        _post(
            [
                (0, available, -6_000_000),
                (0, escrow, 6_000_000),
                (1, available, -6_000_000),
                (1, escrow, 6_000_000),
            ]
        )
    assert (_balance(available), _balance(escrow)) == (10_000_000, 0)
    assert not LedgerTransaction.objects.filter(kind=TRADE).exists()


def test_a_used_idempotency_key_fails_the_post_rather_than_posting_twice(accounts):
    available, escrow, _ = accounts
    _post([(0, available, -5), (0, escrow, 5)], keys=("trade:1",))
    with pytest.raises(IntegrityError):
        _post([(0, available, -5), (0, escrow, 5)], keys=("trade:1",))
    assert LedgerTransaction.objects.filter(idempotency_key="trade:1").count() == 1
    assert _balance(escrow) == 5
