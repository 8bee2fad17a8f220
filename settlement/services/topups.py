"""Card top-ups: create the payment with Stripe; credit only when a verified webhook says paid.

No network call runs inside a database transaction. Creating a top-up is short steps, each
committed before the next network call:
1. commit the intent as a `created` row, unique per (org, Idempotency-Key);
2. call Stripe with an idempotency key built from the row id, outside any transaction;
3. record what Stripe answered in a new transaction.
With a test payment method (server-side confirmation) step 3 records the PaymentIntent id but
keeps the row `created`, step 4 confirms, and step 5 moves it to `pending` (or `failed` on a
decline). A crash or an outage between steps leaves a `created` row; the client's retry with the
same key resumes at the first step not recorded, and Stripe's own idempotency returns what it
already did. A webhook may settle the top-up at any point in between; later steps never undo it.
"""

import hashlib
import uuid

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Q
from django.urls import reverse
from django.utils import timezone

from accounts.principal import Principal
from core.errors import IdempotencyKeyReused, ValidationFailed
from core.units import UnitError, micro_to_cents_exact, money_display
from settlement import stripe_gateway
from settlement.errors import PaymentMethodNotAllowed, TopUpAmountOutOfRange
from settlement.models import TopUp

UNSETTLED = (TopUp.Status.CREATED, TopUp.Status.PENDING)


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
def _topup_record_payment_intent(
    *, topup_id: int, intent_id: str, client_secret: str, is_awaiting_payment: bool
) -> None:
    # The id is a fact whatever the state: the webhook may already have settled the top-up (and
    # recorded the same id), and a refund is later matched by it. Never overwrite another id.
    TopUp.objects.filter(
        Q(stripe_payment_intent_id__isnull=True) | Q(stripe_payment_intent_id=intent_id),
        pk=topup_id,
    ).update(
        stripe_payment_intent_id=intent_id, client_secret=client_secret, updated_at=timezone.now()
    )
    if is_awaiting_payment:
        _topup_mark_pending(topup_id)


@transaction.atomic(durable=True)
def _topup_record_checkout_session(*, topup_id: int, session_id: str, url: str) -> None:
    TopUp.objects.filter(
        Q(stripe_checkout_session_id__isnull=True) | Q(stripe_checkout_session_id=session_id),
        pk=topup_id,
    ).update(stripe_checkout_session_id=session_id, checkout_url=url, updated_at=timezone.now())
    _topup_mark_pending(topup_id)


def _topup_mark_pending(topup_id: int) -> None:
    # Conditional: a webhook that already settled the top-up wins over our own bookkeeping.
    TopUp.objects.filter(pk=topup_id, status=TopUp.Status.CREATED).update(
        status=TopUp.Status.PENDING, updated_at=timezone.now()
    )


@transaction.atomic(durable=True)
def _topup_record_confirmed(*, topup_id: int) -> None:
    _topup_mark_pending(topup_id)


@transaction.atomic(durable=True)
def _topup_record_decline(*, topup_id: int, message: str) -> None:
    # Only an unsettled top-up fails: if the success webhook already won, it stays succeeded.
    TopUp.objects.filter(pk=topup_id, status__in=UNSETTLED).update(
        status=TopUp.Status.FAILED, failure_message=message[:500], updated_at=timezone.now()
    )


def _start_checkout(topup: TopUp, *, cents: int) -> None:
    metadata = {"topup_id": str(topup.id), "org_id": str(topup.org_id)}
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
    _topup_record_checkout_session(topup_id=topup.id, session_id=session.id, url=session.url)


def _start_payment_intent(topup: TopUp, *, cents: int, payment_method: str | None) -> None:
    intent_id = topup.stripe_payment_intent_id
    if intent_id is None:
        intent = stripe_gateway.payment_intent_create(
            amount_cents=cents,
            currency=topup.currency,
            idempotency_key=f"topup-{topup.id}-intent",
            metadata={"topup_id": str(topup.id), "org_id": str(topup.org_id)},
            payment_method=payment_method,
        )
        intent_id = intent.id
        _topup_record_payment_intent(
            topup_id=topup.id,
            intent_id=intent.id,
            client_secret=intent.client_secret,
            is_awaiting_payment=not payment_method,
        )
    if not payment_method:
        return  # the client confirms with the client secret; the webhook reports the outcome
    # Still `created` with an intent id means the confirmation may not have happened (an outage
    # or a crash after step 3): confirm, under the same key, so Stripe replays one it already did.
    try:
        stripe_gateway.payment_intent_confirm(
            payment_intent_id=intent_id, idempotency_key=f"topup-{topup.id}-confirm"
        )
    except stripe_gateway.CardDeclined as declined:
        _topup_record_decline(topup_id=topup.id, message=declined.message)
        return
    _topup_record_confirmed(topup_id=topup.id)


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
    A retry with the same Idempotency-Key returns the first top-up, resuming it if an outage
    stopped it before Stripe answered. Raises PaymentProviderError (502) when Stripe does not
    answer; the row then stays `created` for that retry.
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
    if topup.status == TopUp.Status.CREATED:  # new, or a retry of one Stripe never answered
        if topup.method == TopUp.Method.CHECKOUT:
            _start_checkout(topup, cents=cents)
        else:
            _start_payment_intent(topup, cents=cents, payment_method=payment_method)
    return TopUp.objects.get(pk=topup.id)
