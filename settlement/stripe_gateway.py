"""The project's only door to Stripe. Nothing else imports `stripe`.

Each function makes one call, passes an idempotency key built from our own row id (so a retried
task or request never creates a second payment), and turns Stripe's exceptions into ours. Unit
tests replace this module's functions (the edge we own); integration tests run it for real over
HTTP against localstripe.
"""

import logging
from dataclasses import dataclass

import stripe
from django.conf import settings

from settlement.errors import PaymentProviderError, WebhookSignatureInvalid

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PaymentIntentResult:
    id: str
    client_secret: str
    status: str


@dataclass(frozen=True)
class CheckoutSessionResult:
    id: str
    url: str


class CardDeclined(Exception):
    """The card was refused. Not an outage: the payment simply failed."""

    def __init__(self, message: str, decline_code: str | None):
        super().__init__(message)
        self.message = message
        self.decline_code = decline_code


def _client() -> stripe.StripeClient:
    base_addresses = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else {}
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY, base_addresses=base_addresses, max_network_retries=2
    )


def _provider_error(error: stripe.StripeError) -> PaymentProviderError:
    logger.warning("stripe call failed: %s", error)
    return PaymentProviderError()


def payment_intent_create(
    *,
    amount_cents: int,
    currency: str,
    idempotency_key: str,
    metadata: dict[str, str],
    payment_method: str | None = None,
) -> PaymentIntentResult:
    params: dict = {
        "amount": amount_cents,
        "currency": currency.lower(),
        "metadata": metadata,
        "payment_method_types": ["card"],
    }
    if payment_method:
        params["payment_method"] = payment_method
    try:
        intent = _client().v1.payment_intents.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return PaymentIntentResult(
        id=intent["id"], client_secret=intent["client_secret"], status=intent["status"]
    )


def payment_intent_confirm(*, payment_intent_id: str, idempotency_key: str) -> str:
    """Confirm server-side with the payment method set at creation; returns the new status."""
    try:
        intent = _client().v1.payment_intents.confirm(
            payment_intent_id, options={"idempotency_key": idempotency_key}
        )
    except stripe.CardError as error:
        raise CardDeclined(error.user_message or "Your card was declined.", error.code) from error
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return intent["status"]


def checkout_session_create(
    *,
    amount_cents: int,
    currency: str,
    idempotency_key: str,
    client_reference_id: str,
    metadata: dict[str, str],
    success_url: str,
    cancel_url: str,
) -> CheckoutSessionResult:
    params = {
        "mode": "payment",
        "client_reference_id": client_reference_id,
        "metadata": metadata,
        "payment_intent_data": {"metadata": metadata},
        "success_url": success_url,
        "cancel_url": cancel_url,
        "line_items": [
            {
                "quantity": 1,
                "price_data": {
                    "currency": currency.lower(),
                    "unit_amount": amount_cents,
                    "product_data": {"name": "Token Exchange balance top-up"},
                },
            }
        ],
    }
    try:
        session = _client().v1.checkout.sessions.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return CheckoutSessionResult(id=session["id"], url=session["url"])


def webhook_event_verify(*, payload: bytes, signature_header: str) -> dict:
    """Check the Stripe-Signature header against our endpoint secret; return the event as a dict."""
    if not signature_header:
        raise WebhookSignatureInvalid("The Stripe-Signature header is missing.")
    try:
        event = stripe.Webhook.construct_event(
            payload,
            signature_header,
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
    except stripe.SignatureVerificationError:
        raise WebhookSignatureInvalid() from None
    except ValueError:
        raise WebhookSignatureInvalid("The body is not a Stripe event.") from None
    return event.to_dict()
