"""Stripe webhooks: store each verified event once, then act on it in a task.

The webhook view only verifies and stores (fast, so Stripe never times out and retries); the task
applies the event under a lock on the top-up row. Every effect is guarded twice: by the top-up's
state (a conditional transition) and by a ledger idempotency key, so duplicates, replays and
events arriving out of order never credit or debit twice. An event that can't be applied yet (a
refund before the payment it refunds) or at all (an amount that doesn't match) raises
StripeEventNotApplied: the task marks it failed with the reason, retries with backoff, and the
periodic redrive tries it again, so staff see it in the admin while it waits.

Payouts and withdrawals (settlement.services.payouts) are finished here too: `transfer.*` confirm
or reverse a payout, `account.updated` tracks a connected account's onboarding, and the refund
events settle a withdrawal's refunds. `charge.refunded` reports a charge's cumulative refunds,
ours and those made elsewhere (the dashboard): it books only the part that is not a withdrawal's,
since a withdrawal's refund was held from `available` when it was requested.
"""

import logging
from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core import locks
from core.units import cents_to_micro
from settlement.models import (
    LedgerAccount,
    LedgerTransaction,
    Payout,
    StripeEvent,
    TopUp,
    WithdrawalRefund,
)
from settlement.services.ledger import Posting, ledger_post, org_account, platform_account
from settlement.services.payouts import (
    payout_account_sync,
    payout_transfer_apply,
    refund_status_from_stripe,
    withdrawal_refund_apply,
)

logger = logging.getLogger(__name__)
Kind = LedgerAccount.Kind

REDRIVE_AFTER = timedelta(minutes=1)
REDRIVE_MAX_ATTEMPTS = 20
UNSETTLED = (TopUp.Status.CREATED, TopUp.Status.PENDING)


class StripeEventNotApplied(Exception):
    """The event can't be applied (yet); it stays failed with this reason and is tried again."""


@transaction.atomic(durable=True)
def stripe_event_record(*, event: dict) -> tuple[StripeEvent, bool]:
    """Store a verified event once by its Stripe id; queue it for processing when it is new.

    Returns (event row, is_new). A redelivery of an event not processed yet is queued again.
    """
    from settlement.tasks import stripe_event_process_task  # tasks import services, not vice versa

    existing = StripeEvent.objects.filter(stripe_id=event["id"]).first()
    if existing is None:
        try:
            with transaction.atomic():
                row = StripeEvent.objects.create(
                    stripe_id=event["id"],
                    type=event.get("type", ""),
                    livemode=bool(event.get("livemode", False)),
                    stripe_created=int(event.get("created", 0)),
                    payload=event,
                )
        except IntegrityError:  # the same event delivered twice at once
            return StripeEvent.objects.get(stripe_id=event["id"]), False
        stripe_event_process_task.delay_on_commit(row.id)
        return row, True
    if existing.status in {StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED}:
        stripe_event_process_task.delay_on_commit(existing.id)
    return existing, False


def _locked_topup_for_payment_intent(intent_id: str, metadata: dict | None) -> TopUp | None:
    """The top-up a PaymentIntent pays, locked; None when the payment is not one of ours."""
    found = TopUp.objects.filter(stripe_payment_intent_id=intent_id).first()
    topup_id = str((metadata or {}).get("topup_id", ""))
    if found is None and topup_id.isdigit():
        # The webhook can beat our own record of the PaymentIntent id (step 3 of topup_create).
        found = TopUp.objects.filter(pk=int(topup_id)).first()
    if found is None:
        return None
    topup = locks.row_for_update("settlement.TopUp", found.id)
    if topup.stripe_payment_intent_id not in (None, intent_id):
        # Two PaymentIntents for one top-up (a retry after Stripe forgot our idempotency key):
        # crediting both would pay the buyer twice. Staff refund the second one.
        raise StripeEventNotApplied(
            f"PaymentIntent {intent_id} names top-up {topup.id}, "
            f"which is paid by {topup.stripe_payment_intent_id}"
        )
    topup.stripe_payment_intent_id = intent_id
    return topup


def _locked_topup_for_checkout_session(session: dict) -> TopUp | None:
    """The top-up a Checkout Session pays, locked, with the session's ids recorded on it."""
    found = TopUp.objects.filter(stripe_checkout_session_id=session["id"]).first()
    reference = str(session.get("client_reference_id") or "")
    if found is None and reference.isdigit():
        # As above: the webhook can beat topup_create's own record of the session id.
        found = TopUp.objects.filter(pk=int(reference), method=TopUp.Method.CHECKOUT).first()
    if found is None:
        return None
    topup = locks.row_for_update("settlement.TopUp", found.id)
    if topup.stripe_checkout_session_id not in (None, session["id"]):
        raise StripeEventNotApplied(
            f"Checkout Session {session['id']} names top-up {topup.id}, "
            f"which is paid by {topup.stripe_checkout_session_id}"
        )
    topup.stripe_checkout_session_id = session["id"]
    if session.get("payment_intent") and not topup.stripe_payment_intent_id:
        # Kept so the payment's own events and a later refund find this top-up.
        topup.stripe_payment_intent_id = session["payment_intent"]
    return topup


def _save(topup: TopUp, *fields: str) -> None:
    ids = ["stripe_payment_intent_id", "stripe_checkout_session_id"]  # recorded by the lookups
    topup.save(update_fields=[*fields, *ids, "updated_at"])


def _credit(topup: TopUp, *, paid_micro: int, currency: str) -> str:
    """Mark a locked top-up succeeded and credit the org's available balance, once."""
    if topup.status == TopUp.Status.SUCCEEDED:
        _save(topup)
        return "already credited"
    if paid_micro != topup.amount_micro or currency.upper() != topup.currency:
        raise StripeEventNotApplied(
            f"top-up {topup.id} expects {topup.amount_micro} micro-{topup.currency}, "
            f"Stripe reports {paid_micro} micro-{currency.upper()}"
        )
    clearing = platform_account(kind=Kind.STRIPE_CLEARING)
    available = org_account(org_id=topup.org_id, kind=Kind.AVAILABLE)
    ledger_post(
        kind=LedgerTransaction.Kind.TOPUP,
        postings=[
            Posting(clearing.id, -topup.amount_micro),
            Posting(available.id, topup.amount_micro),
        ],
        reference=topup.ledger_reference,
        idempotency_key=f"{topup.ledger_reference}:credit",
    )
    # A failure recorded earlier (a first card declined, then another one paid) is history now.
    topup.status = TopUp.Status.SUCCEEDED
    topup.succeeded_at = timezone.now()
    topup.failure_message = ""
    _save(topup, "status", "succeeded_at", "failure_message")
    return "credited"


def _settle_unpaid(topup: TopUp, *, status: str, message: str) -> str:
    """Mark a locked, unsettled top-up failed or canceled; a settled one keeps its outcome."""
    if topup.status not in UNSETTLED:
        # A failure that arrives after the success (out of order, or an earlier attempt of the
        # same intent) changes nothing: money already credited stays credited.
        _save(topup)
        return f"top-up already {topup.status}"
    topup.status = status
    topup.failure_message = message[:500]
    _save(topup, "status", "failure_message")
    return status


def _on_payment_intent_succeeded(event: dict) -> str:
    intent = event["data"]["object"]
    topup = _locked_topup_for_payment_intent(intent["id"], intent.get("metadata"))
    if topup is None:
        return "no top-up for this PaymentIntent"
    # localstripe's PaymentIntents have no amount_received; Stripe's always do.
    paid_cents = intent.get("amount_received") or intent["amount"]
    return _credit(topup, paid_micro=cents_to_micro(paid_cents), currency=intent["currency"])


def _on_payment_intent_failed(event: dict) -> str:
    intent = event["data"]["object"]
    topup = _locked_topup_for_payment_intent(intent["id"], intent.get("metadata"))
    if topup is None:
        return "no top-up for this PaymentIntent"
    if event["type"] == "payment_intent.canceled":
        return _settle_unpaid(
            topup, status=TopUp.Status.CANCELED, message="The payment was canceled."
        )
    error = intent.get("last_payment_error") or {}
    message = error.get("message") or "The payment did not go through."
    return _settle_unpaid(topup, status=TopUp.Status.FAILED, message=message)


def _on_checkout_session_paid(event: dict) -> str:
    """checkout.session.completed and async_payment_succeeded: credit once it is paid."""
    session = event["data"]["object"]
    topup = _locked_topup_for_checkout_session(session)
    if topup is None:
        return "no top-up for this Checkout Session"
    if session.get("payment_status") != "paid":
        _save(topup)
        return "checkout completed but not paid yet; waiting for async_payment_succeeded"
    return _credit(
        topup, paid_micro=cents_to_micro(session["amount_total"]), currency=session["currency"]
    )


def _on_checkout_session_unpaid(event: dict) -> str:
    """checkout.session.async_payment_failed and expired: the buyer did not pay."""
    session = event["data"]["object"]
    topup = _locked_topup_for_checkout_session(session)
    if topup is None:
        return "no top-up for this Checkout Session"
    if event["type"] == "checkout.session.expired":
        return _settle_unpaid(
            topup, status=TopUp.Status.CANCELED, message="The checkout page expired unpaid."
        )
    return _settle_unpaid(
        topup, status=TopUp.Status.FAILED, message="The payment did not go through."
    )


def _on_charge_refunded(event: dict) -> str:
    """Debit a refund made outside the exchange. Stripe reports the cumulative amount refunded.

    That amount includes our withdrawals' refunds, whose money left `available` when they were
    requested and is booked by their own outcome (withdrawal_refund_apply): only the rest is
    debited here, by its growth, so deltas are exact. While a withdrawal refund's outcome is not
    recorded yet, nobody can tell whether the amount includes it: the event waits for it.

    Money the buyer already spent can't be taken back from `available`; that shortfall is the
    platform's loss and is booked to `adjustments`, visible for staff to follow up.
    """
    charge = event["data"]["object"]
    intent_id = charge.get("payment_intent")
    if not intent_id:
        return "the charge has no PaymentIntent"
    topup = _locked_topup_for_payment_intent(intent_id, charge.get("metadata"))
    if topup is None:
        return "no top-up for this charge"
    if topup.status != TopUp.Status.SUCCEEDED:
        # Only a paid charge is refunded, so its success event is on its way (events arrive in
        # any order). Dropping the refund now would let the later credit stand in full.
        raise StripeEventNotApplied(
            f"top-up {topup.id} is {topup.status}; the refund waits for the payment's success"
        )
    # The top-up is locked, and every change to its withdrawal refunds locks it first.
    ours = list(WithdrawalRefund.objects.filter(topup=topup).values_list("status", "amount_micro"))
    if any(status == WithdrawalRefund.Status.PENDING for status, _ in ours):
        raise StripeEventNotApplied(
            f"top-up {topup.id} has a withdrawal refund whose outcome is not recorded yet"
        )
    ours_at_stripe = sum(
        amount
        for status, amount in ours
        if status in (WithdrawalRefund.Status.SENT, WithdrawalRefund.Status.SUCCEEDED)
    )
    ours_booked = sum(a for s, a in ours if s == WithdrawalRefund.Status.SUCCEEDED)
    stripe_refunded_micro = min(
        cents_to_micro(int(charge.get("amount_refunded", 0))), topup.amount_micro
    )
    # Refunds made elsewhere, in total so far, and what of them is booked already.
    refunded_micro = max(0, stripe_refunded_micro - ours_at_stripe)
    delta_micro = refunded_micro - (topup.refunded_micro - ours_booked)
    if delta_micro <= 0:
        _save(topup)
        return "refund already booked"
    clearing = platform_account(kind=Kind.STRIPE_CLEARING)
    available = org_account(org_id=topup.org_id, kind=Kind.AVAILABLE)
    adjustments = platform_account(kind=Kind.ADJUSTMENTS)
    # Lock (in the usual ascending order) before reading the balance, so the amount taken is exact.
    locked = locks.ledger_accounts_for_update([available.id, clearing.id, adjustments.id])
    from_buyer_micro = min(delta_micro, locked[available.id].balance_micro)
    shortfall_micro = delta_micro - from_buyer_micro
    ledger_post(
        kind=LedgerTransaction.Kind.TOPUP_REFUND,
        postings=[
            Posting(available.id, -from_buyer_micro),
            Posting(adjustments.id, -shortfall_micro),
            Posting(clearing.id, delta_micro),
        ],
        reference=topup.ledger_reference,
        idempotency_key=f"{topup.ledger_reference}:refunded:{refunded_micro}",
        reason="card refund"
        + (f"; {shortfall_micro} micro-USD already spent" if shortfall_micro else ""),
    )
    topup.refunded_micro += delta_micro
    _save(topup, "refunded_micro")
    return f"refund of {delta_micro} booked"


def _on_refund(event: dict) -> str:
    """refund.created / updated / failed and charge.refund.updated: a withdrawal's refund.

    Refunds that are not a withdrawal's are booked from the charge (charge.refunded).
    """
    refund = event["data"]["object"]
    found = WithdrawalRefund.objects.filter(stripe_refund_id=refund["id"]).first()
    ours_id = str((refund.get("metadata") or {}).get("withdrawal_refund_id", ""))
    if found is None and ours_id.isdigit():
        # The event can beat withdrawal_send's own record of the refund id.
        found = WithdrawalRefund.objects.select_related("topup").filter(pk=int(ours_id)).first()
    if found is None:
        return "not a withdrawal refund"
    if found.stripe_refund_id not in (None, refund["id"]):
        raise StripeEventNotApplied(
            f"refund {refund['id']} names withdrawal refund {found.id}, "
            f"which is refund {found.stripe_refund_id}"
        )
    if refund.get("payment_intent") not in (None, found.topup.stripe_payment_intent_id) or (
        cents_to_micro(int(refund.get("amount", 0))) != found.amount_micro
    ):
        raise StripeEventNotApplied(
            f"refund {refund['id']} does not match withdrawal refund {found.id}"
        )
    return withdrawal_refund_apply(
        refund_id=found.id,
        stripe_refund_id=refund["id"],
        status=refund_status_from_stripe(str(refund.get("status", ""))),
        reason=str(refund.get("failure_reason") or ""),
    )


def _locked_payout_for_transfer(obj: dict) -> Payout | None:
    found = Payout.objects.filter(stripe_transfer_id=obj["id"]).first()
    payout_id = str((obj.get("metadata") or {}).get("payout_id", ""))
    if found is None and payout_id.isdigit():
        # The event can beat payout_send's own record of the transfer id.
        found = Payout.objects.filter(pk=int(payout_id)).first()
    if found is None:
        return None
    return locks.row_for_update("settlement.Payout", found.id)


def _on_transfer(event: dict) -> str:
    """transfer.created / updated / reversed: each carries the whole transfer; apply its state."""
    obj = event["data"]["object"]
    payout = _locked_payout_for_transfer(obj)
    if payout is None:
        return "no payout for this transfer"
    if payout.stripe_transfer_id not in (None, obj["id"]):
        # Two transfers for one payout (a resend after Stripe forgot our key): paying both
        # would pay the provider twice. Staff reverse the second one.
        raise StripeEventNotApplied(
            f"transfer {obj['id']} names payout {payout.id}, "
            f"which is transfer {payout.stripe_transfer_id}"
        )
    amount_micro = cents_to_micro(int(obj.get("amount", 0)))
    if (
        amount_micro != payout.amount_micro
        or str(obj.get("currency", "")).upper() != payout.currency
        or obj.get("destination") != payout.stripe_account_id
    ):
        raise StripeEventNotApplied(
            f"transfer {obj['id']} ({amount_micro} micro-{obj.get('currency')} to "
            f"{obj.get('destination')}) does not match payout {payout.id}"
        )
    if payout.status == Payout.Status.FAILED:
        # We recorded Stripe's refusal and returned the money to earned; a transfer that exists
        # after all would be paid twice. Staff reverse it or adjust.
        raise StripeEventNotApplied(
            f"payout {payout.id} was refused and returned, but transfer {obj['id']} exists"
        )
    return payout_transfer_apply(
        payout=payout,
        transfer_id=obj["id"],
        reversed_micro=cents_to_micro(int(obj.get("amount_reversed", 0))),
    )


def _on_account_updated(event: dict) -> str:
    account = event["data"]["object"]
    capabilities = account.get("capabilities") or {}
    return payout_account_sync(
        stripe_account_id=account["id"],
        is_transfers_active=capabilities.get("transfers") == "active",
        is_payouts_enabled=bool(account.get("payouts_enabled")),
        state_at=int(event.get("created", 0)),
    )


HANDLERS = {
    "payment_intent.succeeded": _on_payment_intent_succeeded,
    "payment_intent.payment_failed": _on_payment_intent_failed,
    "payment_intent.canceled": _on_payment_intent_failed,
    "checkout.session.completed": _on_checkout_session_paid,
    "checkout.session.async_payment_succeeded": _on_checkout_session_paid,
    "checkout.session.async_payment_failed": _on_checkout_session_unpaid,
    "checkout.session.expired": _on_checkout_session_unpaid,
    "charge.refunded": _on_charge_refunded,
    "refund.created": _on_refund,
    "refund.updated": _on_refund,
    "refund.failed": _on_refund,
    "charge.refund.updated": _on_refund,
    # Stripe's transfer events since API 2017-04-06 (no transfer.paid / transfer.failed). The
    # connected account's payout.* events are about its bank and stay unhandled on purpose:
    # see settlement.services.payouts.
    "transfer.created": _on_transfer,
    "transfer.updated": _on_transfer,
    "transfer.reversed": _on_transfer,
    "account.updated": _on_account_updated,
}


@transaction.atomic(durable=True)
def stripe_event_process(*, stripe_event_id: int) -> StripeEvent | None:
    """Apply a stored event once. Entry point for the task; locks the event row, then the top-up."""
    event = locks.row_for_update("settlement.StripeEvent", stripe_event_id)
    if event is None or event.status in {StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED}:
        return event
    handler = HANDLERS.get(event.type)
    event.attempts += 1
    if handler is None:
        event.status = StripeEvent.Status.IGNORED
    else:
        outcome = handler(event.payload)
        logger.info("stripe event %s (%s): %s", event.stripe_id, event.type, outcome)
        event.status = StripeEvent.Status.PROCESSED
    event.last_error = ""
    event.processed_at = timezone.now()
    event.save(update_fields=["status", "attempts", "last_error", "processed_at"])
    return event


@transaction.atomic(durable=True)
def stripe_event_mark_failed(*, stripe_event_id: int, error: str) -> None:
    """Record why processing failed, in its own transaction, so staff can see it in the admin."""
    StripeEvent.objects.filter(
        pk=stripe_event_id, status__in=[StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED]
    ).update(status=StripeEvent.Status.FAILED, attempts=F("attempts") + 1, last_error=error[:2000])


def stripe_events_redrive(*, limit: int = 500) -> list[int]:
    """Queue again the events still unprocessed a minute after they arrived; returns their ids.

    Catches what a lost message or a crashed worker left behind, and retries failed events until
    they have had REDRIVE_MAX_ATTEMPTS tries; after that they wait for staff ("process again").
    Safe to run twice: processing locks the event row and skips what is already done.
    """
    from settlement.tasks import stripe_event_process_task  # tasks import services, not vice versa

    ids = list(
        StripeEvent.objects.filter(
            status__in=[StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED],
            received_at__lt=timezone.now() - REDRIVE_AFTER,
            attempts__lt=REDRIVE_MAX_ATTEMPTS,
        )
        .order_by("id")
        .values_list("id", flat=True)[:limit]
    )
    for stripe_event_id in ids:
        stripe_event_process_task.delay(stripe_event_id)
    return ids
