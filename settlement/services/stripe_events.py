"""Stripe webhooks: store each verified event once, then act on it in a task.

The webhook view only verifies and stores (fast, so Stripe never times out and retries); the task
applies the event under a lock on the top-up row. Every effect is guarded twice: by the top-up's
state (a conditional transition) and by a ledger idempotency key, so duplicates, replays and
events arriving out of order never credit or debit twice.
"""

import logging

from django.db import IntegrityError, transaction
from django.db.models import F
from django.utils import timezone

from core import locks
from core.units import cents_to_micro
from settlement.models import LedgerAccount, LedgerTransaction, StripeEvent, TopUp
from settlement.services.ledger import Posting, ledger_post, org_account, platform_account

logger = logging.getLogger(__name__)
Kind = LedgerAccount.Kind


@transaction.atomic(durable=True)
def stripe_event_record(*, event: dict) -> tuple[StripeEvent, bool]:
    """Store a verified event once by its Stripe id; queue it for processing when it is new.

    Returns (event row, is_new). A redelivery of an event that failed earlier is queued again.
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


def _topup_for_payment_intent(payment_intent: dict) -> TopUp | None:
    topup_id = (payment_intent.get("metadata") or {}).get("topup_id")
    query = TopUp.objects.filter(stripe_payment_intent_id=payment_intent["id"])
    topup = query.first()
    if topup is None and topup_id and str(topup_id).isdigit():
        # The webhook can beat our own record of the PaymentIntent id (step 3 of topup_create).
        topup = TopUp.objects.filter(pk=int(topup_id)).first()
    return topup


def _credit(topup: TopUp, *, paid_micro: int, currency: str) -> str:
    """Mark a locked top-up succeeded and credit the org's available balance, once."""
    if topup.status == TopUp.Status.SUCCEEDED:
        return "already credited"
    if paid_micro != topup.amount_micro or currency.upper() != topup.currency:
        raise ValueError(
            f"top-up {topup.id} expects {topup.amount_micro} {topup.currency}, "
            f"Stripe reports {paid_micro} {currency}"
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
    topup.status = TopUp.Status.SUCCEEDED
    topup.succeeded_at = timezone.now()
    topup.failure_message = ""
    topup.save(update_fields=["status", "succeeded_at", "failure_message", "updated_at"])
    return "credited"


def _on_payment_intent_succeeded(event: dict) -> str:
    intent = event["data"]["object"]
    found = _topup_for_payment_intent(intent)
    if found is None:
        return "no top-up for this PaymentIntent"
    topup = locks.row_for_update("settlement.TopUp", found.id)
    if not topup.stripe_payment_intent_id:
        topup.stripe_payment_intent_id = intent["id"]
    paid_cents = intent.get("amount_received") or intent["amount"]
    return _credit(topup, paid_micro=cents_to_micro(paid_cents), currency=intent["currency"])


def _on_payment_intent_failed(event: dict) -> str:
    intent = event["data"]["object"]
    found = _topup_for_payment_intent(intent)
    if found is None:
        return "no top-up for this PaymentIntent"
    topup = locks.row_for_update("settlement.TopUp", found.id)
    # A failure that arrives after the success (out of order, or an earlier attempt of the
    # same intent) changes nothing: money already credited stays credited.
    if topup.status not in {TopUp.Status.CREATED, TopUp.Status.PENDING}:
        return f"top-up already {topup.status}"
    error = intent.get("last_payment_error") or {}
    topup.status = (
        TopUp.Status.CANCELED if event["type"] == "payment_intent.canceled" else TopUp.Status.FAILED
    )
    topup.failure_message = (error.get("message") or "The payment did not go through.")[:500]
    topup.save(update_fields=["status", "failure_message", "updated_at"])
    return topup.status


def _on_checkout_session_completed(event: dict) -> str:
    session = event["data"]["object"]
    if session.get("payment_status") != "paid":
        return "checkout completed but not paid yet; waiting for async_payment_succeeded"
    found = TopUp.objects.filter(stripe_checkout_session_id=session["id"]).first()
    reference = session.get("client_reference_id")
    if found is None and reference and str(reference).isdigit():
        found = TopUp.objects.filter(pk=int(reference), method=TopUp.Method.CHECKOUT).first()
    if found is None:
        return "no top-up for this Checkout Session"
    topup = locks.row_for_update("settlement.TopUp", found.id)
    if session.get("payment_intent") and not topup.stripe_payment_intent_id:
        topup.stripe_payment_intent_id = session["payment_intent"]
        topup.save(update_fields=["stripe_payment_intent_id", "updated_at"])
    return _credit(
        topup, paid_micro=cents_to_micro(session["amount_total"]), currency=session["currency"]
    )


def _on_charge_refunded(event: dict) -> str:
    """Debit a refund. Stripe reports the cumulative amount refunded, so deltas are exact.

    Money the buyer already spent can't be taken back from `available`; that shortfall is the
    platform's loss and is booked to `adjustments`, visible for staff to follow up.
    """
    charge = event["data"]["object"]
    intent_id = charge.get("payment_intent")
    found = TopUp.objects.filter(stripe_payment_intent_id=intent_id).first() if intent_id else None
    if found is None:
        return "no top-up for this charge"
    topup = locks.row_for_update("settlement.TopUp", found.id)
    if topup.status != TopUp.Status.SUCCEEDED:
        return f"top-up is {topup.status}; nothing was credited to take back"
    refunded_micro = min(cents_to_micro(int(charge.get("amount_refunded", 0))), topup.amount_micro)
    delta_micro = refunded_micro - topup.refunded_micro
    if delta_micro <= 0:
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
    topup.refunded_micro = refunded_micro
    topup.save(update_fields=["refunded_micro", "updated_at"])
    return f"refund of {delta_micro} booked"


HANDLERS = {
    "payment_intent.succeeded": _on_payment_intent_succeeded,
    "payment_intent.payment_failed": _on_payment_intent_failed,
    "payment_intent.canceled": _on_payment_intent_failed,
    "checkout.session.completed": _on_checkout_session_completed,
    "checkout.session.async_payment_succeeded": _on_checkout_session_completed,
    "charge.refunded": _on_charge_refunded,
}


@transaction.atomic(durable=True)
def stripe_event_process(*, stripe_event_id: int) -> StripeEvent:
    """Apply a stored event once. Entry point for the task; locks the event row, then the top-up."""
    event = locks.row_for_update("settlement.StripeEvent", stripe_event_id)
    if event is None or event.status in {StripeEvent.Status.PROCESSED, StripeEvent.Status.IGNORED}:
        return event
    handler = HANDLERS.get(event.type)
    event.attempts += 1
    if handler is None:
        event.status = StripeEvent.Status.IGNORED
        event.last_error = ""
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
    StripeEvent.objects.filter(pk=stripe_event_id).exclude(
        status=StripeEvent.Status.PROCESSED
    ).update(status=StripeEvent.Status.FAILED, attempts=F("attempts") + 1, last_error=error[:2000])
