"""Posting to the double-entry ledger. The only code that writes ledger rows.

`ledger_post` is the one primitive: it locks the accounts it touches (ascending id), checks that
the postings sum to zero and that no account that must stay non-negative would go below zero, then
writes the transaction, its entries and the new balances. It runs inside the caller's transaction
so the business change and its ledger entries commit together, or not at all.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from accounts.models import Org, User
from core import locks
from core.errors import InsufficientFunds, PermissionDenied, ValidationFailed
from settlement.errors import AdjustmentNotAllowed, UnbalancedTransaction
from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.models.ledger import CURRENCY_USD
from settlement.services import ledger_sql

Kind = LedgerAccount.Kind


@dataclass(frozen=True, slots=True)
class Posting:
    account_id: int
    amount_micro: int


def org_account(*, org_id: int, kind: str, currency: str = CURRENCY_USD) -> LedgerAccount:
    """The org's account of `kind`, created on first use."""
    if kind not in LedgerAccount.ORG_KINDS:
        raise ValueError(f"{kind} is not an org account kind")
    account, _ = LedgerAccount.objects.get_or_create(org_id=org_id, kind=kind, currency=currency)
    return account


def platform_account(*, kind: str, currency: str = CURRENCY_USD) -> LedgerAccount:
    """The platform's account of `kind` (fees, stripe_clearing, adjustments, rounding)."""
    if kind not in LedgerAccount.PLATFORM_KINDS:
        raise ValueError(f"{kind} is not a platform account kind")
    account, _ = LedgerAccount.objects.get_or_create(org=None, kind=kind, currency=currency)
    return account


def transfer(source: LedgerAccount, destination: LedgerAccount, amount_micro: int) -> list[Posting]:
    """The two postings that move `amount_micro` from `source` to `destination`."""
    return [Posting(source.id, -amount_micro), Posting(destination.id, amount_micro)]


def ledger_post(
    *,
    kind: str,
    postings: Iterable[Posting],
    reference: str,
    idempotency_key: str | None = None,
    actor: User | None = None,
    reason: str = "",
) -> LedgerTransaction:
    """Write one balanced transaction. Runs inside the caller's transaction (required).

    With an `idempotency_key`, a second call with the same key writes nothing and returns the
    first transaction. Raises InsufficientFunds, before writing anything, when an account that
    must stay non-negative would go below zero.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("ledger_post must run inside the caller's transaction")
    net: dict[int, int] = {}
    for posting in postings:
        if posting.amount_micro:
            net[posting.account_id] = net.get(posting.account_id, 0) + posting.amount_micro
    net = {account_id: amount for account_id, amount in net.items() if amount}
    if sum(net.values()) != 0:
        raise UnbalancedTransaction(f"postings sum to {sum(net.values())}, not zero")
    if len(net) < 2:
        raise UnbalancedTransaction("a transaction moves money between at least two accounts")

    if connection.vendor == "postgresql":
        return _post_postgres(
            kind=kind,
            net=net,
            reference=reference,
            idempotency_key=idempotency_key,
            actor=actor,
            reason=reason,
        )

    # Locks first: a concurrent twin with the same key waits here, then sees the first one's
    # committed row below instead of failing on the unique index.
    accounts = locks.ledger_accounts_for_update(net)
    if len(accounts) != len(net):
        raise ValueError(f"unknown ledger accounts: {sorted(set(net) - set(accounts))}")
    if idempotency_key is not None:
        existing = LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing

    balances = _balances_after(
        net,
        {a.id: (a.kind, a.balance_micro, a.currency) for a in accounts.values()},
    )
    ledger_transaction = LedgerTransaction.objects.create(
        kind=kind,
        reference=reference,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
    )
    for account_id, balance in balances.items():
        accounts[account_id].balance_micro = balance
    LedgerAccount.objects.bulk_update(list(accounts.values()), ["balance_micro"])
    LedgerEntry.objects.bulk_create(
        LedgerEntry(
            transaction=ledger_transaction,
            account_id=account_id,
            amount_micro=amount,
            balance_after_micro=balances[account_id],
            created_at=ledger_transaction.created_at,
        )
        for account_id, amount in net.items()
    )
    return ledger_transaction


def _balances_after(net: dict[int, int], accounts: dict[int, tuple[str, int, str]]) -> dict:
    """New balance per account; raises before anything is written if a rule would break."""
    if len(accounts) != len(net):
        raise ValueError(f"unknown ledger accounts: {sorted(set(net) - set(accounts))}")
    if len({currency for _, _, currency in accounts.values()}) != 1:
        raise UnbalancedTransaction("a transaction stays within one currency")
    balances = {}
    for account_id, amount in net.items():
        kind, balance, _ = accounts[account_id]
        new_balance = balance + amount
        if new_balance < 0 and kind not in LedgerAccount.SIGNED_KINDS:
            raise InsufficientFunds(
                f"{Kind(kind).label} balance is {balance} micro-USD; {-amount} needed",
                account_kind=kind,
            )
        balances[account_id] = new_balance
    return balances


def _post_postgres(*, kind, net, reference, idempotency_key, actor, reason) -> LedgerTransaction:
    """ledger_post on PostgreSQL: one locking read and one write (see ledger_sql)."""
    accounts, existing_id = ledger_sql.lock_accounts(list(net), idempotency_key)
    if existing_id is not None:
        return LedgerTransaction.objects.get(pk=existing_id)
    try:
        balances = _balances_after(net, accounts)
    except InsufficientFunds:
        # A concurrent retry may have spent the money under this very key: that is success.
        if idempotency_key is not None and (found := ledger_sql.find_by_key(idempotency_key)):
            return LedgerTransaction.objects.get(pk=found)
        raise
    created_at = timezone.now()
    transaction_id = ledger_sql.insert_transaction(
        kind=kind,
        reference=reference,
        idempotency_key=idempotency_key,
        actor_id=actor.id if actor is not None else None,
        reason=reason,
        created_at=created_at,
        legs=[(a, amount, balances[a]) for a, amount in net.items()],
    )
    if transaction_id is None:  # a concurrent twin committed this key first
        return LedgerTransaction.objects.get(idempotency_key=idempotency_key)
    ledger_transaction = LedgerTransaction(
        id=transaction_id,
        kind=kind,
        reference=reference,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
        created_at=created_at,
    )
    ledger_transaction._state.adding = False
    ledger_transaction._state.db = connection.alias
    return ledger_transaction


ADJUSTABLE_KINDS = frozenset({Kind.AVAILABLE, Kind.EARNED})


@transaction.atomic(durable=True)
def ledger_adjust(
    *,
    org: Org,
    account_kind: str,
    amount_micro: int,
    reason: str,
    actor: User,
    idempotency_key: str,
) -> LedgerTransaction:
    """A staff correction: move `amount_micro` (signed) between an org account and `adjustments`.

    Only `available` and `earned` can be adjusted: `held` and `escrow` always equal the orders and
    entitlements behind them, and changing them by hand would break that. The reason and the staff
    member are kept on the transaction.
    """
    if not actor.is_staff:
        raise PermissionDenied("Only staff make adjustments.")
    if not reason.strip():
        raise ValidationFailed(fields={"reason": ["Say why; the reason is kept with the entry."]})
    if account_kind not in ADJUSTABLE_KINDS:
        raise AdjustmentNotAllowed(
            fields={"account_kind": ["Only available and earned balances can be adjusted."]}
        )
    if amount_micro == 0:
        raise ValidationFailed(fields={"amount": ["Must not be zero."]})
    target = org_account(org_id=org.id, kind=account_kind)
    adjustments = platform_account(kind=Kind.ADJUSTMENTS)
    return ledger_post(
        kind=LedgerTransaction.Kind.ADJUSTMENT,
        postings=transfer(adjustments, target, amount_micro),
        reference=f"org:{org.id}",
        idempotency_key=f"adjust:{idempotency_key}",
        actor=actor,
        reason=reason.strip(),
    )
