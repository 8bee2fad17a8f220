"""Pay-as-you-go captures, booked in batches after the requests they charge have settled.

Settling a pay-as-you-go request fixes its cost in the same transaction that records it: the
excess of the worst case goes back to the buyer's `available`, and the cost stays held under the
request's own hold, so it can be spent on nothing else (the buyer is charged; no later request
can overspend it). Moving that cost from `held` to the provider's `earned` and the platform's
`fees` is left to this module, a batch at a time.

Why not in the settle: `earned` of a provider and `fees` are one row each, shared by every buyer's
request, and a row lock is held until commit. Posting to them in each settle made every request
of every relay process queue behind the one before it (about 50 settles a second, whatever the
number of threads or processes). A batch locks them once for many captures.

Each process queues what it settled (in memory, after commit) and a flush books the queue: on
PostgreSQL in one statement sent from the relay's event loop (_FLUSH), whose commit does not
wait for the disk, so the buyers' `held` accounts it locks are locked for the statement alone;
otherwise, and for whatever that statement leaves, in one transaction of a few statements
(settlement's `holds_capture_batch`). Either way one ledger transaction per capture under
`hold_capture`'s own key, so a capture happens once even when the stale sweep books the same
hold. What a process left queued when it died is
still held, and recorded in its RelayRequest: the stale sweep captures it (relay.services).
"""

import logging
import threading
from dataclasses import dataclass

from django.db import connection, transaction
from django.utils import timezone

from core.units import bp_floor
from settlement.models import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.models.ledger import CURRENCY_USD
from settlement.services import Posting
from settlement.services.batch import org_accounts_bulk
from settlement.services.holds import HoldCapture, holds_capture_batch
from settlement.services.ledger import platform_account

logger = logging.getLogger(__name__)

Kind = LedgerAccount.Kind

# A flush is due this long after the first capture queued, or at once past this many.
FLUSH_EVERY_S = 0.2
FLUSH_AT_CAPTURES = 200


@dataclass(frozen=True)
class Capture:
    """The cost of one settled request, still held under its hold, to pay its provider."""

    hold_reference: str
    provider_org_id: int
    cost_micro: int
    provider_fee_bp: int


_lock = threading.Lock()
_queued: list[Capture] = []
# One flush at a time per process: a caller that finds one running waits for it, so when it
# returns, everything queued before the call is booked.
_flushing = threading.Lock()


def capture_enqueue(capture: Capture) -> int:
    """Queue a settled request's capture, once its settle committed; returns the queue size."""
    with _lock:
        _queued.append(capture)
        return len(_queued)


def captures_queued() -> int:
    with _lock:
        return len(_queued)


def captures_discard() -> None:
    """Forget what is queued (tests: what one test queued is not the next one's)."""
    with _lock:
        _queued.clear()


def relay_captures_flush() -> int:
    """Book every queued capture; returns how many were booked. Own transactions.

    One transaction for the batch; if it fails, each capture is tried in a transaction of its
    own, and one that still fails stays held for the stale sweep (logged), so a single bad
    capture never holds the others back.
    """
    with _flushing:
        with _lock:
            taken = list(_queued)
            _queued.clear()
        if not taken:
            return 0
        try:
            with transaction.atomic(durable=True):
                _commit_without_waiting()
                _book(taken)
            return len(taken)
        except Exception:
            logger.exception("relay capture batch of %d failed; booking one by one", len(taken))
        booked = 0
        for capture in taken:
            try:
                with transaction.atomic(durable=True):
                    _book([capture])
                booked += 1
            except Exception:
                logger.exception("relay capture of %s left for the stale sweep", capture)
        return booked


def captures_take() -> list[Capture]:
    """Take everything queued (the caller books it, or gives it back with captures_return)."""
    with _lock:
        taken = list(_queued)
        _queued.clear()
        return taken


def captures_return(captures: list[Capture]) -> None:
    with _lock:
        _queued[:0] = captures


_HOLDS = Hold._meta.db_table
_ACCOUNTS = LedgerAccount._meta.db_table
_TRANSACTIONS = LedgerTransaction._meta.db_table
_ENTRIES = LedgerEntry._meta.db_table

# _book in one statement, for PostgreSQL: the holds locked first (ascending id), then the
# accounts (ascending id), the core.locks order; each capture's transaction under the key
# hold_capture uses, skipped when that key is booked or its hold is no longer open (the stale
# sweep got there first: it closes the hold in the transaction that books the key, and a hold
# that was waited for is re-read as committed). Balances after each entry run in the captures'
# order. Nothing is written unless every `held` stays non-negative, every capture fits in what
# its hold has left and the remembered account ids are still the providers' `earned` and the
# platform's fees (`known`); a key booked in the meantime fails the statement on its unique
# index, and the caller then books the batch one capture at a time.
_FLUSH = " ".join(
    f"""
    WITH queued AS (
        SELECT * FROM unnest(%(references)s::text[], %(earned)s::bigint[],
                             %(providers)s::bigint[], %(costs)s::bigint[], %(fees)s::bigint[])
               WITH ORDINALITY AS queued (reference, earned_id, provider_org_id, cost_micro,
                                          fee_micro, n)
    ), holds AS MATERIALIZED (
        SELECT hold.id, hold.reference, hold.org_id,
               hold.amount_micro - hold.captured_micro - hold.released_micro AS remaining_micro
          FROM {_HOLDS} AS hold
         WHERE hold.reference = ANY(%(references)s::text[]) AND hold.status = %(open)s::text
         ORDER BY hold.id
           FOR UPDATE
    ), todo AS MATERIALIZED (
        SELECT queued.*, holds.id AS hold_id, holds.remaining_micro, held.id AS held_id,
               'capture:' || queued.reference || ':settle' AS idempotency_key
          FROM queued
          JOIN holds ON holds.reference = queued.reference
          JOIN {_ACCOUNTS} AS held
            ON held.org_id = holds.org_id AND held.kind = %(held)s::text
           AND held.currency = %(currency)s::text
         WHERE NOT EXISTS (
             SELECT FROM {_TRANSACTIONS} AS txn
              WHERE txn.idempotency_key = 'capture:' || queued.reference || ':settle'
         )
    ), legs AS (
        SELECT n, held_id AS account_id, -cost_micro AS amount_micro FROM todo
        UNION ALL
        SELECT n, earned_id, cost_micro - fee_micro FROM todo WHERE cost_micro > fee_micro
        UNION ALL
        SELECT n, %(fees_account)s::bigint, fee_micro FROM todo WHERE fee_micro > 0
    ), locked AS MATERIALIZED (
        SELECT account.id, account.balance_micro
          FROM {_ACCOUNTS} AS account
         WHERE account.id IN (SELECT account_id FROM legs)
         ORDER BY account.id
           FOR UPDATE
    ), known AS (
        SELECT count(*) = (SELECT count(DISTINCT earned_id) FROM todo)
               + CASE WHEN EXISTS (SELECT FROM todo WHERE fee_micro > 0) THEN 1 ELSE 0 END
               AS is_known
          FROM {_ACCOUNTS} AS account
         WHERE (account.id, account.org_id, account.kind) IN (
                   SELECT DISTINCT earned_id, provider_org_id, %(earned_kind)s::text FROM todo)
            OR (account.id = %(fees_account)s::bigint AND account.org_id IS NULL
                AND account.kind = %(fees_kind)s::text AND EXISTS (
                    SELECT FROM todo WHERE fee_micro > 0))
    ), after AS MATERIALIZED (
        SELECT legs.n, legs.account_id, legs.amount_micro,
               locked.balance_micro + sum(legs.amount_micro) OVER (
                   PARTITION BY legs.account_id ORDER BY legs.n ROWS UNBOUNDED PRECEDING
               ) AS balance_after_micro
          FROM legs JOIN locked ON locked.id = legs.account_id
    ), allowed AS (
        SELECT (SELECT count(*) FROM after) = (SELECT count(*) FROM legs)
               AND coalesce(bool_and(after.balance_after_micro >= 0)
                            FILTER (WHERE after.amount_micro < 0), true)
               AND (SELECT coalesce(bool_and(cost_micro <= remaining_micro), true) FROM todo)
               AND (SELECT count(DISTINCT hold_id) = count(*) FROM todo)
               AND (SELECT is_known FROM known)
               AS is_allowed
          FROM after
    ), txns AS (
        INSERT INTO {_TRANSACTIONS} (kind, reference, idempotency_key, actor_id, reason,
                                     created_at)
        SELECT %(kind)s::text, reference, idempotency_key, NULL, '', %(now)s::timestamptz
          FROM todo
         WHERE (SELECT is_allowed FROM allowed)
         ORDER BY n
        RETURNING id, reference
    ), entries AS (
        INSERT INTO {_ENTRIES} (transaction_id, account_id, amount_micro, balance_after_micro,
                                created_at)
        SELECT txns.id, after.account_id, after.amount_micro, after.balance_after_micro,
               %(now)s::timestamptz
          FROM after JOIN todo ON todo.n = after.n JOIN txns ON txns.reference = todo.reference
    ), balances AS (
        UPDATE {_ACCOUNTS} AS account
           SET balance_micro = final.balance_after_micro
          FROM (
              SELECT DISTINCT ON (account_id) account_id, balance_after_micro
                FROM after ORDER BY account_id, n DESC
          ) AS final
         WHERE account.id = final.account_id AND (SELECT is_allowed FROM allowed)
    ), captured AS (
        UPDATE {_HOLDS} AS hold
           SET captured_micro = hold.captured_micro + todo.cost_micro,
               status = CASE WHEN todo.cost_micro = todo.remaining_micro
                             THEN %(closed)s::text ELSE hold.status END,
               closed_at = CASE WHEN todo.cost_micro = todo.remaining_micro
                                THEN %(now)s::timestamptz ELSE hold.closed_at END
          FROM todo
         WHERE hold.id = todo.hold_id AND (SELECT is_allowed FROM allowed)
    )
    SELECT reference FROM txns
    """.split()  # noqa: S608 - table names come from our models; every value is a parameter
)


async def relay_captures_flush_fast(connection) -> list[Capture]:
    """Book every queued capture in one statement (PostgreSQL); returns what it did not book.

    Runs on the relay's event loop with an autocommit connection whose commits do not wait for
    the disk (see _commit_without_waiting for why that is safe here). What it returns is the
    caller's to book through relay_captures_flush_known (captures_return, then a worker
    thread), which books the batch through the ORM, and each capture alone if that fails; it
    also learns the accounts this statement needs, so the next flush can take it.
    """
    taken = captures_take()
    if not taken or not earned_accounts_known(taken):
        return taken
    try:
        cursor = await connection.execute(
            _FLUSH,
            {
                "references": [c.hold_reference for c in taken],
                "earned": [_earned_ids[c.provider_org_id] for c in taken],
                "providers": [c.provider_org_id for c in taken],
                "earned_kind": Kind.EARNED.value,
                "fees_kind": Kind.FEES.value,
                "costs": [c.cost_micro for c in taken],
                "fees": [bp_floor(c.cost_micro, c.provider_fee_bp) for c in taken],
                "open": Hold.Status.OPEN.value,
                "closed": Hold.Status.CLOSED.value,
                "held": Kind.HELD.value,
                "currency": CURRENCY_USD,
                "fees_account": _fees_id[0],
                "kind": LedgerTransaction.Kind.PAYG.value,
                "now": timezone.now(),
            },
        )
        booked = {reference for (reference,) in await cursor.fetchall()}
    except Exception:
        logger.exception("relay capture batch of %d failed; booking one by one", len(taken))
        return taken
    except BaseException:
        # Cut short (the relay stopping): whether it committed or not, the ORM flush that
        # follows books each capture once, skipping those whose key is booked.
        captures_return(taken)
        raise
    return [capture for capture in taken if capture.hold_reference not in booked]


# Account ids never change once the accounts exist: the fees account, and each provider's
# `earned` (made by relay_captures_flush_known in a worker thread the first time one is needed).
_earned_ids: dict[int, int] = {}
_fees_id: list[int] = []


def captures_accounts_forget() -> None:
    """Forget the remembered account ids (tests: each one's database starts empty)."""
    _earned_ids.clear()
    _fees_id.clear()


def captures_accounts_learn() -> None:
    """Create (once) and remember the accounts the queued captures' one-statement flush needs."""
    with _lock:
        provider_org_ids = {capture.provider_org_id for capture in _queued}
    missing = {org_id for org_id in provider_org_ids if org_id not in _earned_ids}
    if missing:
        earned = org_accounts_bulk(org_ids=missing, kinds=[Kind.EARNED])
        _earned_ids.update({org_id: earned[(org_id, Kind.EARNED)].id for org_id in missing})
    if not _fees_id:
        _fees_id.append(platform_account(kind=Kind.FEES).id)


def relay_captures_flush_known() -> int:
    """relay_captures_flush, first learning (again) the accounts the one-statement flush needs.

    Called with what that flush left, which may be for want of an account id or a stale one.
    """
    captures_accounts_forget()
    captures_accounts_learn()
    return relay_captures_flush()


def earned_accounts_known(captures: list[Capture]) -> bool:
    return bool(_fees_id) and all(c.provider_org_id in _earned_ids for c in captures)


def _commit_without_waiting() -> None:
    """Let this transaction's commit return before the WAL reaches the disk (PostgreSQL).

    The flush locks the buyers' `held` accounts, which every admit and settle of theirs needs:
    not waiting for the disk with those locks held shortens the wait. A crash of the database
    may lose the batch whole; its holds then still hold the costs, and their RelayRequests
    (committed, and flushed, by the settles) say what was charged: the stale sweep books them.
    """
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SET LOCAL synchronous_commit = off")


def capture_book(capture: Capture) -> None:
    """Book one capture inside the caller's transaction (the stale sweep's path)."""
    _book([capture])


def _book(captures: list[Capture]) -> None:
    """Capture each cost from its hold to its provider (less the fee), a batch at a time.

    The same move and key as a single `hold_capture(capture_key="settle")`, so the stale sweep
    and a flush never both book one request.
    """
    fees_id = platform_account(kind=Kind.FEES).id
    earned = org_accounts_bulk(org_ids={c.provider_org_id for c in captures}, kinds=[Kind.EARNED])
    specs = []
    for capture in captures:
        fee = bp_floor(capture.cost_micro, capture.provider_fee_bp)
        postings = [
            Posting(earned[(capture.provider_org_id, Kind.EARNED)].id, capture.cost_micro - fee),
            Posting(fees_id, fee),
        ]
        specs.append(
            HoldCapture(
                reference=capture.hold_reference,
                postings=[posting for posting in postings if posting.amount_micro],
                capture_key="settle",
                kind=LedgerTransaction.Kind.PAYG,
            )
        )
    holds_capture_batch(captures=specs)
