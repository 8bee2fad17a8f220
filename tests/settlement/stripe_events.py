"""Stripe events built and signed by hand, exactly as Stripe signs them.

localstripe never emits checkout, charge or refund events, so these exercise the real
verification path with Stripe's scheme:
`Stripe-Signature: t=<unix time>,v1=hex(HMAC-SHA256(secret, "<t>.<body>"))`.
The objects carry only the fields our handlers read, named and typed as in Stripe's API.
"""

import hashlib
import hmac
import itertools
import json
import time

from settlement.models import TopUp

_ids = itertools.count(1)


def event(type_: str, obj: dict, *, event_id: str | None = None) -> dict:
    return {
        "id": event_id or f"evt_test_{next(_ids)}",
        "object": "event",
        "type": type_,
        "created": int(time.time()),
        "livemode": False,
        "api_version": "2024-06-20",
        "data": {"object": obj},
    }


def payment_intent(
    topup: TopUp,
    *,
    intent_id: str | None = None,
    status: str = "succeeded",
    amount_cents: int | None = None,
    currency: str = "usd",
    error: str | None = None,
) -> dict:
    cents = amount_cents if amount_cents is not None else topup.amount_micro // 10_000
    obj = {
        "id": intent_id or topup.stripe_payment_intent_id,
        "object": "payment_intent",
        "amount": cents,
        "amount_received": cents if status == "succeeded" else 0,
        "currency": currency,
        "status": status,
        "metadata": {"topup_id": str(topup.id), "org_id": str(topup.org_id)},
    }
    if error:
        obj["last_payment_error"] = {"message": error, "code": "card_declined"}
    return obj


def checkout_session(
    topup: TopUp, *, payment_status: str, session_id: str = "cs_test_1", intent_id="pi_cs_1"
) -> dict:
    return {
        "id": session_id,
        "object": "checkout.session",
        "mode": "payment",
        "client_reference_id": str(topup.id),
        "payment_status": payment_status,
        "payment_intent": intent_id,
        "amount_total": topup.amount_micro // 10_000,
        "currency": "usd",
        "metadata": {"topup_id": str(topup.id), "org_id": str(topup.org_id)},
    }


def charge(topup: TopUp, *, refunded_cents: int, intent_id: str | None = None) -> dict:
    return {
        "id": f"ch_for_{topup.id}",
        "object": "charge",
        "payment_intent": intent_id or topup.stripe_payment_intent_id,
        "amount": topup.amount_micro // 10_000,
        "amount_refunded": refunded_cents,
        "refunded": refunded_cents == topup.amount_micro // 10_000,
        "currency": "usd",
    }


def signature_header(body: bytes, secret: str, *, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def body_of(payload: dict) -> bytes:
    return json.dumps(payload).encode()
