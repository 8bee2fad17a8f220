"""Stripe events built and signed by hand, exactly as Stripe signs them.

localstripe never emits checkout, charge or refund events, so these exercise the real
verification path (`stripe.Webhook.construct_event`) with the same HMAC-SHA256 scheme:
`Stripe-Signature: t=<unix time>,v1=hex(HMAC(secret, "<t>.<body>"))`.
"""

import hashlib
import hmac
import itertools
import json
import time

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


def payment_intent(topup, *, status="succeeded", amount_cents=None, error=None) -> dict:
    obj = {
        "id": topup.stripe_payment_intent_id,
        "object": "payment_intent",
        "amount": amount_cents if amount_cents is not None else topup.amount_micro // 10_000,
        "currency": "usd",
        "status": status,
        "metadata": {"topup_id": str(topup.id), "org_id": str(topup.org_id)},
    }
    if error:
        obj["last_payment_error"] = {"message": error}
    return obj


def signature_header(body: bytes, secret: str, *, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def post_event(client, payload: dict, *, secret: str, timestamp: int | None = None):
    body = json.dumps(payload).encode()
    return client.post(
        "/stripe/webhook/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=signature_header(body, secret, timestamp=timestamp),
    )
