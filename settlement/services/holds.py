"""Holds: money set aside from an org's `available` balance into `held` for one purpose.

A hold is named by a unique reference (`order:42`, `relay:req_9`). Capturing part of it moves that
part from `held` to wherever it is spent (escrow, fees…); releasing returns the rest to
`available`. When nothing remains the hold closes. All three run inside the caller's transaction
and lock the hold row before the ledger accounts (core.locks order). Invariant: an org's `held`
balance equals the remaining amounts of its open holds.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from django.utils import timezone

from core import locks
from core.bulk import rows_update
from core.errors import Conflict, ValidationFailed
from settlement.errors import HoldExceeded, HoldNotFound
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.services.batch import TransactionSpec, ledger_post_batch, org_accounts_bulk
from settlement.services.ledger import (
    Posting,
    ledger_post,
    ledger_post_once,
    org_accounts,
    transfer,
)

Kind = LedgerAccount.Kind

_HOLDS = Hold._meta.db_table


def hold_place(*, org_id: int, amount_micro: int, reference: str) -> Hold:
    """Move `amount_micro` from available to held under `reference`. Inside the caller's txn.

    Placing the same reference again with the same amount returns the first hold (a retry);
    with another amount or org it is a conflict. Raises InsufficientFunds when available is short.
    """
    if amount_micro <= 0:
        raise ValidationFailed(fields={"amount": ["A hold must be positive."]})
    # No look for an existing hold first: the ledger transaction's idempotency key finds a
    # retry (or a concurrent twin) below, and a new hold, the usual case, saves the query.
    accounts = org_accounts(org_id=org_id, kinds=[Kind.AVAILABLE, Kind.HELD])
    _, is_new = ledger_post_once(
        kind=LedgerTransaction.Kind.HOLD,
        postings=transfer(accounts[Kind.AVAILABLE], accounts[Kind.HELD], amount_micro),
        reference=reference,
        idempotency_key=f"hold:{reference}",
    )
    if not is_new:
        # A retry, or a concurrent twin with this reference that committed first while this
        # call waited for the account locks (or for its key): its hold is the answer, if its
        # terms are the same.
        twin = Hold.objects.filter(reference=reference).first()
        if twin is None:
            raise Conflict(f"the ledger has a hold {reference} but no hold row")
        return _same_terms(twin, org_id=org_id, amount_micro=amount_micro)
    return Hold.objects.create(org_id=org_id, reference=reference, amount_micro=amount_micro)


def hold_insert_cte(*, reference: str = "%(reference)s::text") -> str:
    """The CTE `hold` of a one-statement `hold_place`: the Hold row, once `txn` was written.

    It follows settlement.services.ledger's `ledger_move_ctes` from available to held, whose
    %(org)s, %(amount)s and %(now)s it shares; `reference` is the SQL text of its reference
    (the same as the move's, whose key is `hold:<reference>`). Returns the hold's id.
    """
    return f"""
    hold AS (
        INSERT INTO {_HOLDS} (org_id, reference, amount_micro, captured_micro, released_micro,
                              status, created_at, closed_at)
        SELECT %(org)s::bigint, {reference}, %(amount)s::bigint, 0, 0, %(open)s::text,
               %(now)s::timestamptz, NULL
          FROM txn
        RETURNING id
    )"""  # noqa: S608 - the table name comes from our model; every value is a parameter


def _same_terms(hold: Hold, *, org_id: int, amount_micro: int) -> Hold:
    if hold.org_id != org_id or hold.amount_micro != amount_micro:
        raise Conflict(f"hold {hold.reference} already exists with other terms")
    return hold


def _locked_hold(reference: str) -> Hold:
    hold = locks.hold_for_update(reference=reference)
    if hold is None:
        raise HoldNotFound(f"no hold {reference}")
    return hold


def _close_if_spent(hold: Hold) -> None:
    if hold.remaining_micro == 0:
        hold.status = Hold.Status.CLOSED
        hold.closed_at = timezone.now()


def hold_capture(
    *,
    reference: str,
    postings: list[Posting],
    capture_key: str,
    kind: str = LedgerTransaction.Kind.HOLD_CAPTURE,
) -> Hold:
    """Spend part of a hold: take the postings' total out of `held` and post them. Inside a txn.

    `postings` say where the money goes (for example the seller's escrow and the fees account),
    each a positive amount; their sum is the amount captured. `capture_key` makes a retry a no-op.
    """
    hold = _locked_hold(reference)
    if not postings or any(posting.amount_micro <= 0 for posting in postings):
        raise ValidationFailed(fields={"amount": ["A capture pays positive amounts."]})
    amount_micro = sum(posting.amount_micro for posting in postings)
    idempotency_key = f"capture:{reference}:{capture_key}"
    # The hold row is locked, so a twin with this key has committed (or never will) by now.
    if LedgerTransaction.objects.filter(idempotency_key=idempotency_key).exists():
        return hold
    if amount_micro > hold.remaining_micro:
        raise HoldExceeded(f"capture of {amount_micro} exceeds the {hold.remaining_micro} left")
    held = org_accounts(org_id=hold.org_id, kinds=[Kind.HELD])[Kind.HELD]
    if any(posting.account_id == held.id for posting in postings):
        # Paying the hold back into its own account would count as captured yet stay held.
        raise ValidationFailed(fields={"postings": ["A capture pays out of held, not into it."]})
    ledger_post(
        kind=kind,
        postings=[Posting(held.id, -amount_micro), *postings],
        reference=reference,
        idempotency_key=idempotency_key,
    )
    hold.captured_micro += amount_micro
    _close_if_spent(hold)
    hold.save(update_fields=["captured_micro", "status", "closed_at"])
    return hold


def hold_release(*, reference: str, amount_micro: int | None = None) -> Hold:
    """Return `amount_micro` (default: all that remains) of a hold to available. Inside a txn.

    Releasing a closed hold, or nothing, changes nothing, so a repeated cancel is harmless.
    """
    hold = _locked_hold(reference)
    amount = hold.remaining_micro if amount_micro is None else amount_micro
    if amount == 0:
        return hold
    if amount < 0:
        raise ValidationFailed(fields={"amount": ["A release must be positive."]})
    if amount > hold.remaining_micro:
        raise HoldExceeded(f"release of {amount} exceeds the {hold.remaining_micro} left")
    accounts = org_accounts(org_id=hold.org_id, kinds=[Kind.AVAILABLE, Kind.HELD])
    ledger_post(
        kind=LedgerTransaction.Kind.HOLD_RELEASE,
        postings=transfer(accounts[Kind.HELD], accounts[Kind.AVAILABLE], amount),
        reference=reference,
        # The running total released is unique per hold, so each partial release has its key.
        idempotency_key=f"release:{reference}:{hold.released_micro + amount}",
    )
    hold.released_micro += amount
    _close_if_spent(hold)
    hold.save(update_fields=["released_micro", "status", "closed_at"])
    return hold


@dataclass(frozen=True)
class HoldCapture:
    """One `hold_capture` of a batch: where part of the hold `reference` goes, and as what."""

    reference: str
    postings: Sequence[Posting]
    capture_key: str
    kind: str = LedgerTransaction.Kind.HOLD_CAPTURE


def holds_capture_batch(*, captures: Sequence[HoldCapture]) -> int:
    """`hold_capture` for many holds in a few statements; returns how many it booked. In a txn.

    The same moves under the same keys (`capture:<reference>:<capture key>`), so each capture
    is booked once whichever path gets there first, and one already booked is skipped. Holds
    are locked first (by id), then ledger_post_batch locks the accounts (by id): the core.locks
    order. Raises, writing nothing, when a hold is missing, closed or short.
    """
    if not captures:
        return 0
    holds = locks.holds_for_update(references=[capture.reference for capture in captures])
    missing = sorted({c.reference for c in captures} - set(holds))
    if missing:
        raise HoldNotFound(f"no hold {missing[0]}")
    held = org_accounts_bulk(org_ids={hold.org_id for hold in holds.values()}, kinds=[Kind.HELD])
    keys = [f"capture:{c.reference}:{c.capture_key}" for c in captures]
    # The holds are locked, so no other capture of them can commit while this one runs.
    booked = set(
        LedgerTransaction.objects.filter(idempotency_key__in=keys).values_list(
            "idempotency_key", flat=True
        )
    )
    now = timezone.now()
    specs, changed = [], {}
    for capture, key in zip(captures, keys, strict=True):
        if key in booked:
            continue
        if not capture.postings or any(p.amount_micro <= 0 for p in capture.postings):
            raise ValidationFailed(fields={"amount": ["A capture pays positive amounts."]})
        hold = holds[capture.reference]
        held_id = held[(hold.org_id, Kind.HELD)].id
        if any(posting.account_id == held_id for posting in capture.postings):
            raise ValidationFailed(
                fields={"postings": ["A capture pays out of held, not into it."]}
            )
        amount_micro = sum(posting.amount_micro for posting in capture.postings)
        if hold.status != Hold.Status.OPEN or amount_micro > hold.remaining_micro:
            raise HoldExceeded(
                f"capture of {amount_micro} exceeds the {hold.remaining_micro} left on "
                f"{hold.reference} ({hold.status})"
            )
        specs.append(
            TransactionSpec(
                kind=capture.kind,
                reference=hold.reference,
                idempotency_key=key,
                postings=[Posting(held_id, -amount_micro), *capture.postings],
            )
        )
        hold.captured_micro += amount_micro
        if hold.remaining_micro == 0:
            hold.status, hold.closed_at = Hold.Status.CLOSED, now
        changed[hold.id] = hold
        booked.add(key)
    if not specs:
        return 0
    if ledger_post_batch(specs) != len(specs):
        raise Conflict("a capture's key was used while its hold was locked")
    rows_update(
        Hold,
        ids=list(changed),
        columns={
            "captured_micro": [hold.captured_micro for hold in changed.values()],
            "status": [hold.status for hold in changed.values()],
            "closed_at": [hold.closed_at for hold in changed.values()],
        },
    )
    return len(specs)
