"""Holds: money set aside from an org's `available` balance into `held` for one purpose.

A hold is named by a unique reference (`order:42`, `relay:req_9`). Capturing part of it moves that
part from `held` to wherever it is spent (escrow, fees…); releasing returns the rest to
`available`. When nothing remains the hold closes. All three run inside the caller's transaction
and lock the hold row before the ledger accounts (core.locks order).
"""

from django.utils import timezone

from core import locks
from core.errors import Conflict, ValidationFailed
from settlement.errors import HoldExceeded, HoldNotFound
from settlement.models import Hold, LedgerAccount, LedgerTransaction
from settlement.services.ledger import Posting, ledger_post, org_account, transfer

Kind = LedgerAccount.Kind


def hold_place(*, org_id: int, amount_micro: int, reference: str) -> Hold:
    """Move `amount_micro` from available to held under `reference`. Inside the caller's txn.

    Placing the same reference again with the same amount returns the first hold (a retry);
    with another amount it is a conflict. Raises InsufficientFunds when available is short.
    """
    if amount_micro <= 0:
        raise ValidationFailed(fields={"amount": ["A hold must be positive."]})
    existing = Hold.objects.filter(reference=reference).first()
    if existing is not None:
        if existing.org_id != org_id or existing.amount_micro != amount_micro:
            raise Conflict(f"hold {reference} already exists with other terms")
        return existing
    available = org_account(org_id=org_id, kind=Kind.AVAILABLE)
    held = org_account(org_id=org_id, kind=Kind.HELD)
    ledger_post(
        kind=LedgerTransaction.Kind.HOLD,
        postings=transfer(available, held, amount_micro),
        reference=reference,
        idempotency_key=f"hold:{reference}",
    )
    # A concurrent twin that got the account locks first has committed its hold by now; the
    # ledger post above returned its transaction, so return its hold too.
    twin = Hold.objects.filter(reference=reference).first()
    if twin is not None:
        return twin
    return Hold.objects.create(org_id=org_id, reference=reference, amount_micro=amount_micro)


def _locked_open_hold(reference: str) -> Hold:
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

    `postings` say where the money goes (for example the seller's escrow and the fees account);
    their sum is the amount captured. `capture_key` makes a retry a no-op.
    """
    hold = _locked_open_hold(reference)
    amount_micro = sum(posting.amount_micro for posting in postings)
    if amount_micro <= 0:
        raise ValidationFailed(fields={"amount": ["A capture must be positive."]})
    idempotency_key = f"capture:{reference}:{capture_key}"
    if LedgerTransaction.objects.filter(idempotency_key=idempotency_key).exists():
        return hold
    if amount_micro > hold.remaining_micro:
        raise HoldExceeded(f"capture of {amount_micro} exceeds the {hold.remaining_micro} left")
    held = org_account(org_id=hold.org_id, kind=Kind.HELD)
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
    hold = _locked_open_hold(reference)
    amount = hold.remaining_micro if amount_micro is None else amount_micro
    if amount == 0:
        return hold
    if amount < 0:
        raise ValidationFailed(fields={"amount": ["A release must be positive."]})
    if amount > hold.remaining_micro:
        raise HoldExceeded(f"release of {amount} exceeds the {hold.remaining_micro} left")
    held = org_account(org_id=hold.org_id, kind=Kind.HELD)
    available = org_account(org_id=hold.org_id, kind=Kind.AVAILABLE)
    ledger_post(
        kind=LedgerTransaction.Kind.HOLD_RELEASE,
        postings=transfer(held, available, amount),
        reference=reference,
        idempotency_key=f"release:{reference}:{hold.released_micro + amount}",
    )
    hold.released_micro += amount
    _close_if_spent(hold)
    hold.save(update_fields=["released_micro", "status", "closed_at"])
    return hold
