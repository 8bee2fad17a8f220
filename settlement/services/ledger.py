"""Posting to the double-entry ledger.

This is the code that writes ledger rows. The one exception is the relay's hot path
(relay/fast_path.py and the capture flush in relay/captures.py): single statements that make
the moves of `hold_place`, `hold_release` and `hold_capture` under the same idempotency keys,
with the same locks and rules, checked by the same database guards and by `ledger_check`.

`ledger_post` is the one primitive: it locks the accounts it touches (ascending id), checks that
the postings sum to zero and that no account that must stay non-negative would go below zero, then
writes the transaction, its entries and the new balances. It runs inside the caller's transaction
so the business change and its ledger entries commit together, or not at all.

Every money movement goes through it, so its round trips are the ledger's speed. On PostgreSQL
it is one statement: it locks the accounts, looks up the idempotency key, checks the rules and
writes the transaction, its entries and the balances, or writes nothing and returns what it saw
so the refusal can be explained. Planning that statement afresh each time cost more than running
it; the connection prepares it on the server after its first few runs (the database settings'
prepare threshold), and from then on PostgreSQL only executes it. SQLite (one writer) takes the
ORM path; the tests run on both.

`ledger_post_durable` is the same post for a movement with nothing else to commit beside it
(a staff adjustment, a transfer): it is its own transaction, on PostgreSQL the one statement
in autocommit, so one round trip.
"""

import functools
from collections.abc import Iterable
from dataclasses import dataclass

import orjson
from django.db import connection, connections, transaction
from django.utils import timezone

from accounts.models import Org, User
from core import locks
from core.errors import InsufficientFunds, PermissionDenied, ValidationFailed
from settlement.errors import AdjustmentNotAllowed, UnbalancedTransaction
from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.models.ledger import CURRENCY_USD

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


def org_accounts(
    *, org_id: int, kinds: Iterable[str], currency: str = CURRENCY_USD
) -> dict[str, LedgerAccount]:
    """The org's accounts of `kinds` by kind, in one query once they exist."""
    kinds = sorted(set(kinds))
    if not set(kinds) <= LedgerAccount.ORG_KINDS:
        raise ValueError(f"{kinds} are not all org account kinds")
    found = {
        account.kind: account
        for account in LedgerAccount.objects.filter(
            org_id=org_id, kind__in=kinds, currency=currency
        )
    }
    for kind in kinds:  # sorted, so two first uses create the rows in the same order
        if kind not in found:
            found[kind] = org_account(org_id=org_id, kind=kind, currency=currency)
    return found


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
    ledger_transaction, _ = ledger_post_once(
        kind=kind,
        postings=postings,
        reference=reference,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
    )
    return ledger_transaction


def ledger_post_durable(
    *,
    kind: str,
    postings: Iterable[Posting],
    reference: str,
    idempotency_key: str | None = None,
    actor: User | None = None,
    reason: str = "",
) -> LedgerTransaction:
    """`ledger_post` as a database transaction of its own, committed when it returns.

    For a money movement with no business change to commit beside it: a staff adjustment, a
    transfer between two accounts. Inside a caller's transaction it raises RuntimeError, as a
    durable atomic block does: there, `ledger_post` belongs. On PostgreSQL the one statement of
    `ledger_post` runs in autocommit, so it is its own transaction: the balance trigger and the
    foreign keys are checked at its end, and the whole transfer is one round trip instead of
    three (BEGIN, the statement, COMMIT).
    """
    params = {
        "kind": kind,
        "reference": reference,
        "idempotency_key": idempotency_key,
        "actor": actor,
        "reason": reason,
    }
    if connection.vendor == "postgresql" and connection.get_autocommit():
        ledger_transaction, _ = _post_postgres(net=_net(postings), **params)
        return ledger_transaction
    # Durable: Django refuses it inside a caller's transaction (tests' own excepted).
    with transaction.atomic(durable=True):
        return ledger_post(postings=postings, **params)


def ledger_post_once(
    *,
    kind: str,
    postings: Iterable[Posting],
    reference: str,
    idempotency_key: str | None = None,
    actor: User | None = None,
    reason: str = "",
) -> tuple[LedgerTransaction, bool]:
    """`ledger_post`, also saying whether this call wrote the transaction (False: a retry)."""
    if not connection.in_atomic_block:
        raise RuntimeError("ledger_post must run inside the caller's transaction")
    net = _net(postings)
    if connection.vendor == "postgresql":
        return _post_postgres(
            kind=kind,
            net=net,
            reference=reference,
            idempotency_key=idempotency_key,
            actor=actor,
            reason=reason,
        )
    return _post_orm(
        kind=kind,
        net=net,
        reference=reference,
        idempotency_key=idempotency_key,
        actor=actor,
        reason=reason,
    )


def _net(postings: Iterable[Posting]) -> dict[int, int]:
    """The postings summed per account; raises unless they balance across two accounts or more."""
    net: dict[int, int] = {}
    for posting in postings:
        # Exactly int: money is never a float, a Decimal or a bool (which is an int too).
        if type(posting.amount_micro) is not int or type(posting.account_id) is not int:
            raise TypeError(f"a posting holds two ints, not {posting!r}")
        if posting.amount_micro:
            net[posting.account_id] = net.get(posting.account_id, 0) + posting.amount_micro
    net = {account_id: amount for account_id, amount in net.items() if amount}
    if sum(net.values()) != 0:
        raise UnbalancedTransaction(f"postings sum to {sum(net.values())}, not zero")
    if len(net) < 2:
        raise UnbalancedTransaction("a transaction moves money between at least two accounts")
    return net


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


def _post_orm(*, kind, net, reference, idempotency_key, actor, reason):
    # Locks first: a concurrent twin with the same key waits here, then sees the first one's
    # committed row below instead of failing on the unique index.
    accounts = locks.ledger_accounts_for_update(net)
    if idempotency_key is not None:
        existing = LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()
        if existing is not None:
            return existing, False
    balances = _balances_after(
        net, {a.id: (a.kind, a.balance_micro, a.currency) for a in accounts.values()}
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
    return ledger_transaction, True


_ACCOUNTS = LedgerAccount._meta.db_table
_TRANSACTIONS = LedgerTransaction._meta.db_table
_ENTRIES = LedgerEntry._meta.db_table
_SIGNED_KINDS = "{" + ",".join(sorted(LedgerAccount.SIGNED_KINDS)) + "}"


def _entries_and_balances(created_at: str) -> str:
    """The CTEs `entries` and `balances` of a one-statement post, once `txn` was written.

    The entries are the rows of `after` (account_id, amount_micro, balance_after_micro) under
    the new transaction, at `created_at` (SQL), and each account gets its balance after.
    """
    return f"""entries AS (
        INSERT INTO {_ENTRIES} (transaction_id, account_id, amount_micro, balance_after_micro,
                                created_at)
        SELECT txn.id, after.account_id, after.amount_micro, after.balance_after_micro,
               {created_at}
          FROM txn CROSS JOIN after
    ), balances AS (
        UPDATE {_ACCOUNTS} AS account
           SET balance_micro = after.balance_after_micro
          FROM after, txn
         WHERE account.id = after.account_id
    )"""  # noqa: S608 - table names come from our models; every value is a parameter


# ledger_post in one statement. `locked` takes the row locks in ascending id order and, having
# waited for them, reads the balances as last committed. Nothing is written unless the key is
# unused, every account exists, they share a currency and no account that must stay
# non-negative goes below zero (the same rule as _balances_after, which explains a refusal).
# `ON CONFLICT DO NOTHING` covers a twin that committed the key while this statement waited: its
# snapshot predates that commit, so `existing` cannot see it. The UPDATE rewrites rows this very
# statement locked; PostgreSQL follows them to their latest version. Table names come from our
# models and the kinds from our constants; every value is a parameter.
_POST_SQL = f"""
    WITH legs AS (
        SELECT *
          FROM unnest(%(account_ids)s::bigint[], %(amounts)s::bigint[])
               AS leg (account_id, amount_micro)
    ), locked AS MATERIALIZED (
        SELECT account.id, account.kind, account.balance_micro, account.currency
          FROM {_ACCOUNTS} AS account
         WHERE account.id = ANY(%(account_ids)s::bigint[])
         ORDER BY account.id
           FOR UPDATE
    ), existing AS (
        SELECT txn.id
          FROM {_TRANSACTIONS} AS txn
         WHERE txn.idempotency_key = %(idempotency_key)s::text
    ), after AS MATERIALIZED (
        SELECT legs.account_id, legs.amount_micro, locked.kind, locked.balance_micro,
               locked.currency, locked.balance_micro + legs.amount_micro AS balance_after_micro
          FROM legs JOIN locked ON locked.id = legs.account_id
    ), allowed AS (
        SELECT count(*) = cardinality(%(account_ids)s::bigint[])
               AND count(DISTINCT currency) = 1
               AND bool_and(balance_after_micro >= 0 OR kind = ANY('{_SIGNED_KINDS}'))
               AS is_allowed
          FROM after
    ), txn AS (
        INSERT INTO {_TRANSACTIONS} (kind, reference, idempotency_key, actor_id, reason, created_at)
        SELECT %(kind)s::text, %(reference)s::text, %(idempotency_key)s::text,
               %(actor_id)s::bigint, %(reason)s::text, %(created_at)s::timestamptz
         WHERE NOT EXISTS (SELECT FROM existing) AND (SELECT is_allowed FROM allowed)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    ), {_entries_and_balances("%(created_at)s::timestamptz")}
    SELECT (SELECT id FROM txn), (SELECT id FROM existing),
           after.account_id, after.kind, after.balance_micro, after.currency
      FROM after
    """  # noqa: S608


def _post_postgres(*, kind, net, reference, idempotency_key, actor, reason):
    created_at = timezone.now()
    account_ids = list(net)
    with connection.cursor() as cursor:
        cursor.execute(
            _POST_SQL,
            {
                "kind": kind,
                "reference": reference,
                "idempotency_key": idempotency_key,
                "actor_id": actor.id if actor is not None else None,
                "reason": reason,
                "created_at": created_at,
                "account_ids": _bigint_array(account_ids),
                "amounts": _bigint_array(net[a] for a in account_ids),
            },
        )
        rows = cursor.fetchall()
    written_id, existing_id = rows[0][:2] if rows else (None, None)
    if written_id is not None:
        ledger_transaction = LedgerTransaction(
            id=written_id,
            kind=kind,
            reference=reference,
            idempotency_key=idempotency_key,
            actor=actor,
            reason=reason,
            created_at=created_at,
        )
        ledger_transaction._state.adding = False
        ledger_transaction._state.db = connection.alias
        return ledger_transaction, True
    if existing_id is not None:
        return LedgerTransaction.objects.get(pk=existing_id), False
    try:
        # Nothing was written: say why, with the balances the statement saw under its locks.
        _balances_after(net, {row[2]: (row[3], row[4], row[5]) for row in rows})
    except InsufficientFunds:
        # A twin that committed while this call waited for the locks may have spent the money
        # under this very key: that is success.
        if idempotency_key is not None and (twin := _by_key(idempotency_key)):
            return twin, False
        raise
    if idempotency_key is not None and (twin := _by_key(idempotency_key)):
        return twin, False  # a twin committed this key while this call waited
    raise RuntimeError("ledger_post wrote nothing and found no reason why")


def _bigint_array(values: Iterable[int]) -> str:
    # An array literal: the driver's own array adaptation costs more than the rest of the call.
    # Safe because _net let only ints through.
    return "{" + ",".join(map(str, values)) + "}"


def _by_key(idempotency_key: str) -> LedgerTransaction | None:
    return LedgerTransaction.objects.filter(idempotency_key=idempotency_key).first()


# One-statement moves, for the hot paths that make ledger_post's moves in a single statement of
# their own (relay/fast_path.py, marketplace/fast_path.py). They share this text so that every
# such move locks, checks and writes exactly as the others do.


def sql_minified(sql: str) -> str:
    """`sql` on one line.

    psycopg caches its parse of a statement's placeholders only for a text of up to 4,096
    characters; past it, every execution parses the whole text again.
    """
    return " ".join(sql.split())


# The legs of a move of %(amount)s from %(source)s to %(destination)s of org %(org)s, in
# ascending account id, as _POST_SQL locks them, with the balances after it. `{guard}` must hold
# for any account to be locked; `{reference}` and `{key}` are SQL text expressions (parameters by
# default) for the transaction's reference and idempotency key.
_MOVE_SQL = f"""
    locked AS MATERIALIZED (
        SELECT account.id, account.balance_micro
          FROM {_ACCOUNTS} AS account
         WHERE account.id IN (%(source)s::bigint, %(destination)s::bigint)
           AND account.org_id = %(org)s::bigint AND {{guard}}
         ORDER BY account.id
           FOR UPDATE
    ), after AS MATERIALIZED (
        SELECT locked.id AS account_id, leg.amount_micro,
               locked.balance_micro + leg.amount_micro AS balance_after_micro
          FROM locked JOIN (
              VALUES (%(source)s::bigint, -%(amount)s::bigint),
                     (%(destination)s::bigint, %(amount)s::bigint)
          ) AS leg (account_id, amount_micro) ON leg.account_id = locked.id
    ), allowed AS (
        SELECT count(*) = 2 AND bool_and(balance_after_micro >= 0) AS is_allowed FROM after
    ), txn AS (
        INSERT INTO {_TRANSACTIONS} (kind, reference, idempotency_key, actor_id, reason, created_at)
        SELECT %(kind)s::text, {{reference}}, {{key}}, NULL, '', %(now)s::timestamptz
         WHERE (SELECT is_allowed FROM allowed)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    ), {_entries_and_balances("%(now)s::timestamptz")}
"""  # noqa: S608 - table names come from our models; every value is a parameter


def ledger_move_ctes(
    *, guard: str, reference: str = "%(reference)s::text", key: str = "%(key)s::text"
) -> str:
    """The CTEs (locked, after, allowed, txn, entries, balances) of a one-statement transfer.

    The statement's own `ledger_post` of %(amount)s from %(source)s to %(destination)s, both
    accounts of %(org)s, as kind %(kind)s at %(now)s: locks in ascending id, balances read
    under the lock, nothing written unless both accounts are found and neither goes negative
    (only non-negative kinds move this way), the key unused. `txn` returns the transaction's id
    when it was written. The deferred balance trigger and `ledger_check` cover it as any post.
    """
    return _MOVE_SQL.format(guard=guard, reference=reference, key=key)


def model_insert_fields(model) -> list:
    """The model's concrete fields but its id: the values of a row a statement inserts."""
    return [field for field in model._meta.concrete_fields if not field.primary_key]


@functools.cache
def _preparer():
    """A database wrapper, never connected, whose operations prepare values for its backend.

    `connections["default"]` would be a wrapper per thread or per event-loop context, each
    with its own state; preparing a value needs none of it.
    """
    return connections.create_connection("default")


def row_json(fields, instance) -> str:
    """The row of `instance` as a JSON object by column, each value prepared by its field.

    A statement turns it back into a row of the table (json_populate_record), so PostgreSQL
    casts every value to its column's type: one parameter, and one cached statement text, for
    a row of any width, whose columns come from the model. Fields fill their defaults and
    automatic values (pre_save, as for an insert). orjson writes datetimes with their
    microseconds and offset, and UUIDs as text.
    """
    preparer = _preparer()
    return orjson.dumps(
        {
            field.column: field.get_db_prep_save(field.pre_save(instance, True), preparer)
            for field in fields
        }
    ).decode()


ADJUSTABLE_KINDS = frozenset({Kind.AVAILABLE, Kind.EARNED})


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
    return ledger_post_durable(
        kind=LedgerTransaction.Kind.ADJUSTMENT,
        postings=transfer(adjustments, target, amount_micro),
        reference=f"org:{org.id}",
        idempotency_key=f"adjust:{idempotency_key}",
        actor=actor,
        reason=reason.strip(),
    )
