"""Holds: money set aside from an org's `available` balance into `held` for one purpose.

A hold is named by a unique reference (`order:42`, `relay:req_9`). Capturing part of it moves that
part from `held` to wherever it is spent (escrow, fees…); releasing returns the rest to
`available`. When nothing remains the hold closes. All three run inside the caller's transaction
and lock the hold row before the ledger accounts (core.locks order). Invariant: an org's `held`
balance equals the remaining amounts of its open holds.
"""

from django.utils import timezone

from core import locks
from core.errors import Conflict, ValidationFailed
from settlement.errors import HoldExceeded, HoldNotFound
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.services.ledger import (
    Posting,
    ledger_post,
    ledger_post_once,
    org_accounts,
    transfer,
)

Kind = LedgerAccount.Kind


def hold_place(*, org_id: int, amount_micro: int, reference: str) -> Hold:
    """Move `amount_micro` from available to held under `reference`. Inside the caller's txn.

    Placing the same reference again with the same amount returns the first hold (a retry);
    with another amount or org it is a conflict. Raises InsufficientFunds when available is short.
    """
    if amount_micro <= 0:
        raise ValidationFailed(fields={"amount": ["A hold must be positive."]})
    existing = Hold.objects.filter(reference=reference).first()
    if existing is not None:
        return _same_terms(existing, org_id=org_id, amount_micro=amount_micro)
    accounts = org_accounts(org_id=org_id, kinds=[Kind.AVAILABLE, Kind.HELD])
    _, is_new = ledger_post_once(
        kind=LedgerTransaction.Kind.HOLD,
        postings=transfer(accounts[Kind.AVAILABLE], accounts[Kind.HELD], amount_micro),
        reference=reference,
        idempotency_key=f"hold:{reference}",
    )
    if not is_new:
        # A concurrent twin with this reference committed first while this call waited for the
        # account locks (or for its key): its hold is the answer, if its terms are the same.
        twin = Hold.objects.filter(reference=reference).first()
        if twin is None:
            raise Conflict(f"the ledger has a hold {reference} but no hold row")
        return _same_terms(twin, org_id=org_id, amount_micro=amount_micro)
    return Hold.objects.create(org_id=org_id, reference=reference, amount_micro=amount_micro)


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
