"""Card top-ups: create the payment with Stripe; credit only when a verified webhook says paid.

No network call runs inside a database transaction. Creating a top-up is three short steps:
1. commit the intent as a `created` row, unique per (org, Idempotency-Key);
2. call Stripe with an idempotency key built from the row id, outside any transaction;
3. record what Stripe answered in a new transaction (a conditional UPDATE from `created`).
A crash between the steps leaves a `created` row; the client's retry with the same key resumes at
step 2, and Stripe's own idempotency returns the payment it already made.
"""

import hashlib
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.urls import reverse
from django.utils import timezone

from accounts.principal import Principal
from core.errors import IdempotencyKeyReused, ValidationFailed
from core.units import UnitError, micro_to_cents_exact, money_display
from settlement import stripe_gateway
from settlement.errors import PaymentMethodNotAllowed, TopUpAmountOutOfRange
from settlement.models import TopUp


def _fingerprint(*, amount_micro: int, method: str, payment_method: str | None) -> str:
    return hashlib.sha256(f"{amount_micro}|{method}|{payment_method or ''}".encode()).hexdigest()


def _validate_amount(amount_micro: int) -> int:
    try:
        cents = micro_to_cents_exact(amount_micro)
    except UnitError as error:
        raise ValidationFailed(fields={"amount": [str(error)]}) from None
    low, high = settings.TOPUP_MIN_MICRO, settings.TOPUP_MAX_MICRO
    if not low <= amount_micro <= high:
        raise TopUpAmountOutOfRange(
            f"A top-up is between {money_display(low)} and {money_display(high)}.",
            fields={"amount": [f"Between {money_display(low)} and {money_display(high)}."]},
        )
    return cents


@transaction.atomic(durable=True)
def _topup_intent_record(
    *, principal: Principal, amount_micro: int, method: str, key: str, fingerprint: str
) -> TopUp:
    existing = TopUp.objects.filter(org=principal.org, idempotency_key=key).first()
    if existing is None:
        try:
            with transaction.atomic():
                return TopUp.objects.create(
                    org=principal.org,
                    created_by=principal.user,
                    amount_micro=amount_micro,
                    method=method,
                    idempotency_key=key,
                    request_fingerprint=fingerprint,
                )
        except IntegrityError:  # a concurrent retry with the same key committed first
            existing = TopUp.objects.get(org=principal.org, idempotency_key=key)
    if existing.request_fingerprint != fingerprint:
        raise IdempotencyKeyReused()
    return existing


@transaction.atomic(durable=True)
def _topup_record_stripe_ids(*, topup_id: int, **fields) -> None:
    TopUp.objects.filter(pk=topup_id, status=TopUp.Status.CREATED).update(
        status=TopUp.Status.PENDING, updated_at=timezone.now(), **fields
    )


@transaction.atomic(durable=True)
def _topup_record_decline(*, topup_id: int, message: str) -> None:
    # Only a pending top-up fails: if the success webhook already won, it stays succeeded.
    TopUp.objects.filter(pk=topup_id, status=TopUp.Status.PENDING).update(
        status=TopUp.Status.FAILED, failure_message=message[:500], updated_at=timezone.now()
    )


def topup_create(
    *,
    principal: Principal,
    amount_micro: int,
    idempotency_key: str | None = None,
    payment_method: str | None = None,
) -> TopUp:
    """Start a card top-up for the principal's org. Entry point; manages its own transactions.

    In `payment_intent` mode it returns the PaymentIntent's client secret for the client to
    confirm; with `payment_method` (test mode only) the server confirms it at once. In `checkout`
    mode it returns the hosted Checkout URL. Either way the balance is credited only by the webhook.
    """
    cents = _validate_amount(amount_micro)
    method = settings.STRIPE_TOPUP_MODE
    if payment_method and (
        method != TopUp.Method.PAYMENT_INTENT or not settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS
    ):
        raise PaymentMethodNotAllowed(fields={"payment_method": ["Not accepted here."]})
    key = idempotency_key or f"auto-{uuid.uuid4().hex}"
    topup = _topup_intent_record(
        principal=principal,
        amount_micro=amount_micro,
        method=method,
        key=key,
        fingerprint=_fingerprint(
            amount_micro=amount_micro, method=method, payment_method=payment_method
        ),
    )
    if topup.status != TopUp.Status.CREATED:
        return topup  # a retry: the first answer stands

    metadata = {"topup_id": str(topup.id), "org_id": str(topup.org_id)}
    if method == TopUp.Method.CHECKOUT:
        return_url = settings.SITE_URL + reverse("portal:topup-detail", args=[topup.id])
        session = stripe_gateway.checkout_session_create(
            amount_cents=cents,
            currency=topup.currency,
            idempotency_key=f"topup-{topup.id}-checkout",
            client_reference_id=str(topup.id),
            metadata=metadata,
            success_url=return_url,
            cancel_url=return_url,
        )
        _topup_record_stripe_ids(
            topup_id=topup.id, stripe_checkout_session_id=session.id, checkout_url=session.url
        )
        return TopUp.objects.get(pk=topup.id)

    intent = stripe_gateway.payment_intent_create(
        amount_cents=cents,
        currency=topup.currency,
        idempotency_key=f"topup-{topup.id}-intent",
        metadata=metadata,
        payment_method=payment_method,
    )
    _topup_record_stripe_ids(
        topup_id=topup.id, stripe_payment_intent_id=intent.id, client_secret=intent.client_secret
    )
    if payment_method:
        try:
            stripe_gateway.payment_intent_confirm(
                payment_intent_id=intent.id, idempotency_key=f"topup-{topup.id}-confirm"
            )
        except stripe_gateway.CardDeclined as declined:
            _topup_record_decline(topup_id=topup.id, message=declined.message)
    return TopUp.objects.get(pk=topup.id)
