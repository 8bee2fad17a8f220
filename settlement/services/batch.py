"""Posting many ledger transactions at once, for the matching engine's batches and the runs.

`ledger_post_batch` takes specs of postings and skips those whose key was used;
`ledger_post_many` takes flat columns of new transactions (the engine's trades). Both write
through `_legs_write`. Same rules as `ledger_post` (each transaction sums to zero, non-negative
accounts never dip below zero after any transaction, idempotency keys), but the accounts are
locked once, in ascending id order, and the transactions, their entries and the new balances
are written with one statement each (core.bulk), whatever the batch's size. A batch is all or
nothing: it runs inside the caller's transaction. The balances are checked before anything is
written.
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

    # The keys are looked up under the account locks, so a twin that committed first is seen.
    accounts = locks.ledger_accounts_for_update({a for spec in specs for a in spec.net})
    keys = [spec.idempotency_key for spec in specs if spec.idempotency_key]
    used_keys = _used_keys(keys)
    todo = [
        spec for spec in specs if spec.idempotency_key not in used_keys or not spec.idempotency_key
    ]
    if not todo:
        return 0
    legs = _Legs()
    for index, spec in enumerate(todo):
        for account_id, amount in spec.net.items():
            legs.add(index, account_id, amount)
    _legs_write(
        accounts,
        kinds=[spec.kind for spec in todo],
        references=[spec.reference for spec in todo],
        idempotency_keys=[spec.idempotency_key for spec in todo],
        reasons=[spec.reason for spec in todo],
        legs=legs,
    )
    return len(todo)


def ledger_post_many(
    *,
    kinds: Sequence[str],
    references: Sequence[str],
    idempotency_keys: Sequence[str],
    leg_transactions: Sequence[int],
    leg_accounts: Sequence[int],
    leg_amounts: Sequence[int],
) -> list[int]:
    """Write many new balanced transactions; returns their ids, in order. Inside the caller's txn.

    Transaction i is `kinds[i]`, `references[i]`, `idempotency_keys[i]`; its entries are the legs
    whose `leg_transactions` value is i, written as given (one entry per leg, none netted). Legs
    come grouped by transaction, in transaction order, so each entry's running balance follows
    the order of the ids. The rules are `ledger_post`'s: every transaction sums to zero across
    two accounts or more, within one currency; amounts are ints and never zero; the accounts are
    locked in ascending id order and no account that must stay non-negative goes below zero at
    any entry. Everything is checked before anything is written.

    Every key must be new. A used one makes the insert fail on the key's unique index, and with
    it the caller's whole transaction: this is for writers whose keys name rows they have just
    created (the engine's trades, whose ids are new in the same transaction), where a used key
    is a fault, never a retry, so the keys are not looked up first. A writer that may retry a
    posting uses `ledger_post`, or `ledger_post_batch`, which skips the keys already used.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("ledger_post_many must run inside the caller's transaction")
    count = len(references)
    if not len(kinds) == len(idempotency_keys) == count:
        raise ValueError("kinds, references and keys need one value per transaction")
    if not len(leg_accounts) == len(leg_amounts) == len(leg_transactions):
        raise ValueError("every leg needs a transaction, an account and an amount")
    if count == 0:
        return []
    # Exactly int, checked over whole columns at C speed: money is never a float, a Decimal or a
    # bool (which is an int too).
    if not set(map(type, leg_amounts)) | set(map(type, leg_accounts)) <= _INT_ONLY:
        raise TypeError("a leg's account and amount are ints")
    if 0 in leg_amounts:
        raise UnbalancedTransaction("a ledger entry moves money: no leg of zero")
    sums = [0] * count
    first_accounts: list[int | None] = [None] * count
    spans_two_accounts = [False] * count
    previous = 0
    for index, account_id, amount in zip(leg_transactions, leg_accounts, leg_amounts, strict=True):
        if index < previous:
            raise ValueError("legs come grouped by transaction, in transaction order")
        previous = index
        sums[index] += amount
        first = first_accounts[index]
        if first is None:
            first_accounts[index] = account_id
        elif first != account_id:
            spans_two_accounts[index] = True
    if any(sums) or not all(spans_two_accounts):
        index = next(i for i in range(count) if sums[i] or not spans_two_accounts[i])
        raise UnbalancedTransaction(
            f"{references[index]}: postings sum to {sums[index]} and must sum to zero "
            "across at least two accounts"
        )

    accounts = locks.ledger_accounts_for_update(leg_accounts)
    if len(accounts) != len(set(leg_accounts)):
        raise ValueError(f"unknown ledger accounts: {sorted(set(leg_accounts) - set(accounts))}")
    return _legs_write(
        accounts,
        kinds=kinds,
        references=references,
        idempotency_keys=idempotency_keys,
        reasons=[""] * count,
        legs=_Legs(list(leg_transactions), list(leg_accounts), list(leg_amounts)),
    )


_INT_ONLY = frozenset({int})


@dataclass
class _Legs:
    """The entries to write, as columns: transaction position, account, signed amount."""

    transactions: list[int] = field(default_factory=list)
    accounts: list[int] = field(default_factory=list)
    amounts: list[int] = field(default_factory=list)

    def add(self, transaction_index: int, account_id: int, amount_micro: int) -> None:
        self.transactions.append(transaction_index)
        self.accounts.append(account_id)
        self.amounts.append(amount_micro)


def _legs_write(
    accounts: dict[int, LedgerAccount],
    *,
    kinds: Sequence[str],
    references: Sequence[str],
    idempotency_keys: Sequence[str | None],
    reasons: Sequence[str],
    legs: _Legs,
) -> list[int]:
    """Check and write balanced legs on `accounts`, locked by the caller; the new txn ids.

    Each transaction stays in one currency, and no account that must stay non-negative goes
    below zero at any entry; then the transactions, their entries and the new balances are
    written with one statement each.
    """
    if len({account.currency for account in accounts.values()}) > 1:
        currencies: dict[int, set[str]] = {}
        for index, account_id in zip(legs.transactions, legs.accounts, strict=True):
            currencies.setdefault(index, set()).add(accounts[account_id].currency)
        for index, found in currencies.items():
            if len(found) > 1:
                raise UnbalancedTransaction(
                    f"{references[index]}: a transaction stays in one currency"
                )
    balances = {account_id: account.balance_micro for account_id, account in accounts.items()}
    may_go_negative = {a for a, account in accounts.items() if account.may_go_negative}
    balances_after = []
    for index, account_id, amount in zip(
        legs.transactions, legs.accounts, legs.amounts, strict=True
    ):
        balance = balances[account_id] + amount
        if balance < 0 and account_id not in may_go_negative:
            account = accounts[account_id]
            raise InsufficientFunds(
                f"{references[index]}: {account} would go to {balance}", account_kind=account.kind
            )
        balances[account_id] = balance
        balances_after.append(balance)

    now = timezone.now()
    transaction_ids = rows_insert(
        LedgerTransaction,
        columns={
            "kind": kinds,
            "reference": references,
            "idempotency_key": idempotency_keys,
            "reason": reasons,
        },
        constants={"actor_id": None, "created_at": now},
        returning_ids=True,
    )
    rows_insert(
        LedgerEntry,
        columns={
            "transaction_id": [transaction_ids[index] for index in legs.transactions],
            "account_id": legs.accounts,
            "amount_micro": legs.amounts,
            "balance_after_micro": balances_after,
        },
        constants={"created_at": now},
    )
    changed = sorted(set(legs.accounts))
    rows_update(
        LedgerAccount, ids=changed, columns={"balance_micro": [balances[a] for a in changed]}
    )
    return transaction_ids
