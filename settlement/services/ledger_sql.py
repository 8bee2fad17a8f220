"""ledger_post's hot path on PostgreSQL, in two statements instead of seven.

Every money movement goes through `ledger_post`, so its round trips are the ledger's speed. On
PostgreSQL it (1) locks the accounts in ascending id order and reads their balances and any
transaction already written under the idempotency key, in one SELECT … FOR UPDATE, then
(2) writes the transaction, its entries and the new balances in one statement with
data-modifying CTEs. `ON CONFLICT DO NOTHING` on the idempotency key makes a concurrent twin a
no-op (the caller then returns the first transaction). Behaviour is the same as the ORM path
used on SQLite; the tests run on both.
"""

from datetime import datetime

from django.db import connection

from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction

_ACCOUNTS = LedgerAccount._meta.db_table
_TRANSACTIONS = LedgerTransaction._meta.db_table
_ENTRIES = LedgerEntry._meta.db_table

_LOCK_SQL = f"""
SELECT account.id, account.kind, account.balance_micro, account.currency,
       (SELECT txn.id FROM {_TRANSACTIONS} AS txn WHERE txn.idempotency_key = %s)
  FROM {_ACCOUNTS} AS account
 WHERE account.id = ANY(%s)
 ORDER BY account.id
   FOR UPDATE OF account
"""  # noqa: S608 - table names come from our models; values are parameters


def lock_accounts(account_ids: list[int], idempotency_key: str | None):
    """Lock the accounts (ascending id); return ({id: (kind, balance, currency)}, existing id)."""
    with connection.cursor() as cursor:
        cursor.execute(_LOCK_SQL, [idempotency_key, sorted(account_ids)])
        rows = cursor.fetchall()
    existing_id = rows[0][4] if rows else None
    return {row[0]: (row[1], row[2], row[3]) for row in rows}, existing_id


def find_by_key(idempotency_key: str) -> int | None:
    with connection.cursor() as cursor:
        cursor.execute(
            f"SELECT id FROM {_TRANSACTIONS} WHERE idempotency_key = %s",  # noqa: S608
            [idempotency_key],
        )
        row = cursor.fetchone()
    return row[0] if row else None


def insert_transaction(
    *,
    kind: str,
    reference: str,
    idempotency_key: str | None,
    actor_id: int | None,
    reason: str,
    created_at: datetime,
    legs: list[tuple[int, int, int]],
) -> int | None:
    """Write the transaction, its entries (account, amount, balance after) and the balances.

    Returns the new transaction's id, or None when the idempotency key was taken meanwhile.
    The accounts must already be locked by `lock_accounts` in this transaction.
    """
    values = ", ".join(["(%s::bigint, %s::bigint, %s::bigint)"] * len(legs))
    sql = f"""
    WITH txn AS (
        INSERT INTO {_TRANSACTIONS} (kind, reference, idempotency_key, actor_id, reason, created_at)
        VALUES (%s, %s, %s, %s, %s, %s)
        ON CONFLICT (idempotency_key) DO NOTHING
        RETURNING id
    ), legs (account_id, amount_micro, balance_after_micro) AS (VALUES {values}
    ), entries AS (
        INSERT INTO {_ENTRIES} (transaction_id, account_id, amount_micro, balance_after_micro,
                                created_at)
        SELECT txn.id, legs.account_id, legs.amount_micro, legs.balance_after_micro, %s
          FROM txn CROSS JOIN legs
    ), balances AS (
        UPDATE {_ACCOUNTS} AS account
           SET balance_micro = legs.balance_after_micro
          FROM legs, txn
         WHERE account.id = legs.account_id
    )
    SELECT id FROM txn
    """  # noqa: S608 - table names come from our models; values are parameters
    params: list = [kind, reference, idempotency_key, actor_id, reason, created_at]
    for leg in legs:
        params.extend(leg)
    params.append(created_at)
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        row = cursor.fetchone()
    return row[0] if row else None
