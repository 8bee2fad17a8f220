"""Posting many ledger transactions at once, for the matching engine's batches.

Same rules as `ledger_post` (each transaction sums to zero, non-negative accounts never dip below
zero after any transaction, idempotency keys), but the accounts are locked once, in ascending id
order, and the transactions, their entries and the new balances are written with one statement
each (core.bulk), whatever the batch's size. A batch is all or nothing: it runs inside the
caller's transaction. The balances are checked before anything is written.
"""

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from django.db import connection
from django.utils import timezone

from core import locks
from core.bulk import rows_insert, rows_update, text_array
from core.errors import InsufficientFunds
from settlement.errors import UnbalancedTransaction
from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.models.ledger import CURRENCY_USD
from settlement.services.ledger import Posting


@dataclass
class TransactionSpec:
    kind: str
    reference: str
    postings: list[Posting]
    idempotency_key: str | None = None
    reason: str = ""
    net: dict[int, int] = field(default_factory=dict, init=False)


def org_accounts_bulk(
    *, org_ids: Iterable[int], kinds: Iterable[str], currency: str = CURRENCY_USD
) -> dict[tuple[int, str], LedgerAccount]:
    """The accounts of `kinds` for every org in `org_ids`, creating the missing ones in bulk."""
    org_ids, kinds = set(org_ids), set(kinds)
    if not org_ids or not kinds:
        return {}

    def fetch() -> dict[tuple[int, str], LedgerAccount]:
        rows = LedgerAccount.objects.filter(org_id__in=org_ids, kind__in=kinds, currency=currency)
        return {(account.org_id, account.kind): account for account in rows}

    found = fetch()
    missing = [(o, k) for o in org_ids for k in kinds if (o, k) not in found]
    if missing:
        LedgerAccount.objects.bulk_create(
            [LedgerAccount(org_id=o, kind=k, currency=currency) for o, k in missing],
            ignore_conflicts=True,  # a concurrent first use created it: fine, fetch it below
        )
        found = fetch()
    return found


def _used_keys(keys: list[str]) -> set[str]:
    if not keys:
        return set()
    if connection.vendor == "postgresql":
        # One array parameter rather than an IN list of a thousand keys.
        with connection.cursor() as cursor:
            cursor.execute(_USED_KEYS_SQL, [text_array(keys)])
            return {row[0] for row in cursor.fetchall()}
    return set(
        LedgerTransaction.objects.filter(idempotency_key__in=keys).values_list(
            "idempotency_key", flat=True
        )
    )


_USED_KEYS_SQL = (
    f"SELECT idempotency_key FROM {LedgerTransaction._meta.db_table}"  # noqa: S608
    " WHERE idempotency_key = ANY(%s::varchar[])"
)


def ledger_post_batch(specs: Sequence[TransactionSpec]) -> int:
    """Write `specs` as balanced transactions in order; returns how many were written.

    Specs whose idempotency key was used before are skipped. Inside the caller's transaction.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("ledger_post_batch must run inside the caller's transaction")
    if not specs:
        return 0
    for spec in specs:
        net: dict[int, int] = {}
        for posting in spec.postings:
            net[posting.account_id] = net.get(posting.account_id, 0) + posting.amount_micro
        spec.net = {account_id: amount for account_id, amount in net.items() if amount}
        if sum(spec.net.values()) != 0 or len(spec.net) < 2:
            raise UnbalancedTransaction(f"{spec.reference}: postings do not balance")

    accounts = locks.ledger_accounts_for_update({a for spec in specs for a in spec.net})
    for spec in specs:
        if len({accounts[account_id].currency for account_id in spec.net}) != 1:
            raise UnbalancedTransaction(f"{spec.reference}: a transaction stays in one currency")
    keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
    used_keys = _used_keys(keys)
    todo = [
        spec for spec in specs if spec.idempotency_key not in used_keys or not spec.idempotency_key
    ]
    if not todo:
        return 0

    now = timezone.now()
    transaction_ids = rows_insert(
        LedgerTransaction,
        columns={
            "kind": [spec.kind for spec in todo],
            "reference": [spec.reference for spec in todo],
            "idempotency_key": [spec.idempotency_key for spec in todo],
            "reason": [spec.reason for spec in todo],
        },
        constants={"actor_id": None, "created_at": now},
        returning_ids=True,
    )
    entry_transactions: list[int] = []
    entry_accounts: list[int] = []
    entry_amounts: list[int] = []
    entry_balances: list[int] = []
    balances = {account_id: account.balance_micro for account_id, account in accounts.items()}
    for spec, transaction_id in zip(todo, transaction_ids, strict=True):
        for account_id, amount in spec.net.items():
            balance = balances[account_id] + amount
            if balance < 0 and not accounts[account_id].may_go_negative:
                account = accounts[account_id]
                raise InsufficientFunds(
                    f"{spec.reference}: {account} would go to {balance}",
                    account_kind=account.kind,
                )
            balances[account_id] = balance
            entry_transactions.append(transaction_id)
            entry_accounts.append(account_id)
            entry_amounts.append(amount)
            entry_balances.append(balance)
    rows_insert(
        LedgerEntry,
        columns={
            "transaction_id": entry_transactions,
            "account_id": entry_accounts,
            "amount_micro": entry_amounts,
            "balance_after_micro": entry_balances,
        },
        constants={"created_at": now},
    )
    changed = sorted(set(entry_accounts))
    rows_update(
        LedgerAccount, ids=changed, columns={"balance_micro": [balances[a] for a in changed]}
    )
    for account_id in changed:
        accounts[account_id].balance_micro = balances[account_id]
    return len(todo)
