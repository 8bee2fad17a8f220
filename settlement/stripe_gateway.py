"""The project's only door to Stripe. Nothing else imports `stripe`.

Each function makes one call, passes an idempotency key built from our own row id (so a retried
task or request never creates a second payment), and turns Stripe's exceptions into ours. Unit
tests replace this module's functions (the edge we own); integration tests run it for real over
HTTP against localstripe.
"""

import json
import logging
from dataclasses import dataclass

import stripe
from django.conf import settings

from settlement.errors import PaymentProviderError, WebhookSignatureInvalid

logger = logging.getLogger(__name__)

# The library waits 80 s per attempt by default. Every call here runs while a person or a task
# waits for the answer, so a hung connection must fail fast (and be retried with the same
# idempotency key) rather than hold a web worker for minutes.
REQUEST_TIMEOUT_S = 20


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


class WebhookPayloadInvalid(Exception):
    """The signature verified but the body is not a Stripe event we can store."""


def _client() -> stripe.StripeClient:
    base_addresses = {"api": settings.STRIPE_API_BASE} if settings.STRIPE_API_BASE else {}
    return stripe.StripeClient(
        settings.STRIPE_SECRET_KEY,
        base_addresses=base_addresses,
        max_network_retries=2,
        http_client=stripe.RequestsClient(timeout=REQUEST_TIMEOUT_S),
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
    """Check the Stripe-Signature header against our endpoint secret; return the event as a dict.

    Raises WebhookSignatureInvalid when the header is missing, does not match, or is older than
    the tolerance (a replay), and WebhookPayloadInvalid when a verified body is not an event.
    """
    if not signature_header:
        raise WebhookSignatureInvalid("The Stripe-Signature header is missing.")
    try:
        # Stripe signs the body as text; bytes that are not UTF-8 were never signed by it.
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookSignatureInvalid() from None
    try:
        stripe.WebhookSignature.verify_header(
            text,
            signature_header,
            settings.STRIPE_WEBHOOK_SECRET,
            tolerance=settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS,
        )
    except stripe.SignatureVerificationError:
        raise WebhookSignatureInvalid() from None
    # Parsed here rather than by stripe.Webhook.construct_event, which fails with an
    # AttributeError (a 500) on a verified body that is JSON but not an object.
    try:
        event = json.loads(text)
    except ValueError:
        raise WebhookPayloadInvalid("The body is not JSON.") from None
    if not isinstance(event, dict) or not isinstance(event.get("data"), dict):
        raise WebhookPayloadInvalid("The body is not a Stripe event.")
    if not isinstance(event.get("id"), str) or not event["id"]:
        raise WebhookPayloadInvalid("The event has no id.")
    if not isinstance(event.get("type"), str):
        raise WebhookPayloadInvalid("The event has no type.")
    return event


# Connect (payouts) and refunds (withdrawals). A refusal (RequestRefused) is Stripe's final word on
# that request: nothing was moved, and because the answer is stored under the idempotency key, a
# retry would only hear it again. An outage (PaymentProviderError) is worth retrying with the
# same key. Errors that are neither are our own bugs or configuration, and surface as such.


@dataclass(frozen=True)
class ConnectedAccountResult:
    id: str


@dataclass(frozen=True)
class AccountLinkResult:
    url: str
    expires_at: int


@dataclass(frozen=True)
class TransferResult:
    id: str
    amount_cents: int
    destination: str


@dataclass(frozen=True)
class RefundResult:
    id: str
    status: str  # pending, requires_action, succeeded, failed or canceled
    amount_cents: int
    failure_reason: str = ""


class RequestRefused(Exception):
    """Stripe refused the request (a 4xx answer): nothing happened and retrying won't change it."""

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.message = message
        self.code = code


_REFUSALS = (stripe.InvalidRequestError, stripe.PermissionError, stripe.CardError)


def _refused(error: stripe.StripeError) -> RequestRefused:
    logger.info("stripe refused a request: %s", error)
    message = error.user_message or str(error) or "Stripe refused the request."
    return RequestRefused(message[:500], error.code)


def connected_account_create(
    *, email: str, idempotency_key: str, metadata: dict[str, str]
) -> ConnectedAccountResult:
    """An Express connected account that can receive transfers."""
    params = {
        "type": "express",
        "email": email,
        "capabilities": {"transfers": {"requested": True}},
        "metadata": metadata,
    }
    try:
        account = _client().v1.accounts.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    except _REFUSALS as error:
        raise _refused(error) from error
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return ConnectedAccountResult(id=account["id"])


def account_link_create(*, account_id: str, refresh_url: str, return_url: str) -> AccountLinkResult:
    """A fresh Express onboarding link.

    No idempotency key: a link is single-use and expires within minutes, so a replayed answer
    would hand back a dead link; a second link for the same account harms nothing.
    """
    params = {
        "account": account_id,
        "refresh_url": refresh_url,
        "return_url": return_url,
        "type": "account_onboarding",
    }
    try:
        link = _client().v1.account_links.create(params=params)
    except _REFUSALS as error:
        raise _refused(error) from error
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return AccountLinkResult(url=link["url"], expires_at=int(link["expires_at"]))


def transfer_create(
    *,
    amount_cents: int,
    currency: str,
    destination: str,
    idempotency_key: str,
    metadata: dict[str, str],
    transfer_group: str,
) -> TransferResult:
    """Move money from the platform's Stripe balance to a connected account."""
    params = {
        "amount": amount_cents,
        "currency": currency.lower(),
        "destination": destination,
        "metadata": metadata,
        "transfer_group": transfer_group,
    }
    try:
        transfer = _client().v1.transfers.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    except _REFUSALS as error:
        raise _refused(error) from error
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return TransferResult(
        id=transfer["id"], amount_cents=int(transfer["amount"]), destination=destination
    )


def refund_create(
    *, payment_intent_id: str, amount_cents: int, idempotency_key: str, metadata: dict[str, str]
) -> RefundResult:
    """Refund part of a PaymentIntent's charge to the card that paid it."""
    params = {"payment_intent": payment_intent_id, "amount": amount_cents, "metadata": metadata}
    try:
        refund = _client().v1.refunds.create(
            params=params, options={"idempotency_key": idempotency_key}
        )
    except _REFUSALS as error:
        raise _refused(error) from error
    except stripe.StripeError as error:
        raise _provider_error(error) from error
    return RefundResult(
        id=refund["id"],
        status=refund["status"],
        amount_cents=int(refund["amount"]),
        failure_reason=str(refund["failure_reason"] or "") if "failure_reason" in refund else "",
    )
