"""Stripe Connect and refund objects for hand-signed events, and a webhook sender.

localstripe has no Connect (no accounts, no transfers) and never emits refund events, so these
events are built by hand with the fields our handlers read, named and typed as in Stripe's API,
and posted signed to the real /stripe/webhook/ endpoint, so verification runs as in production.
"""

from dataclasses import dataclass, field

from celery.exceptions import Retry
from django.http import HttpResponse

from settlement.models import Payout, WithdrawalRefund
from tests.settlement import stripe_events as se

SECRET = "whsec_unit_test"


def transfer(
    payout: Payout,
    *,
    transfer_id: str = "tr_test_1",
    amount_cents: int | None = None,
    reversed_cents: int = 0,
    destination: str | None = None,
) -> dict:
    cents = amount_cents if amount_cents is not None else payout.amount_micro // 10_000
    return {
        "id": transfer_id,
        "object": "transfer",
        "amount": cents,
        "amount_reversed": reversed_cents,
        "reversed": reversed_cents == cents,
        "currency": "usd",
        "destination": destination or payout.stripe_account_id,
        "transfer_group": f"payout:{payout.id}",
        "metadata": {"payout_id": str(payout.id), "org_id": str(payout.org_id)},
    }


def account(account_id: str, *, transfers: str = "active", payouts_enabled: bool = True) -> dict:
    return {
        "id": account_id,
        "object": "account",
        "type": "express",
        "charges_enabled": False,
        "payouts_enabled": payouts_enabled,
        "details_submitted": True,
        "capabilities": {"transfers": transfers},
    }


def refund(part: WithdrawalRefund, *, refund_id: str, status: str = "succeeded") -> dict:
    return {
        "id": refund_id,
        "object": "refund",
        "amount": part.amount_micro // 10_000,
        "currency": "usd",
        "status": status,
        "payment_intent": part.topup.stripe_payment_intent_id,
        "charge": f"ch_for_{part.topup_id}",
        "failure_reason": "expired_or_canceled_card" if status == "failed" else None,
        "metadata": {
            "withdrawal_id": str(part.withdrawal_id),
            "withdrawal_refund_id": str(part.id),
        },
    }


@dataclass
class Delivery:
    response: HttpResponse
    retried: list[Retry] = field(default_factory=list)


class Stripe:
    """Posts to /stripe/webhook/ as Stripe does, then runs the queued tasks as a worker would."""

    def __init__(self, client, capture):
        self._client = client
        self._capture = capture

    def send(self, type_: str, obj: dict, *, event_id: str | None = None) -> Delivery:
        return self.send_event(se.event(type_, obj, event_id=event_id))

    def send_event(self, payload: dict) -> Delivery:
        body = se.body_of(payload)
        with self._capture() as callbacks:
            response = self._client.post(
                "/stripe/webhook/",
                data=body,
                content_type="application/json",
                HTTP_STRIPE_SIGNATURE=se.signature_header(body, SECRET),
            )
        assert response.status_code == 200, response.content
        delivery = Delivery(response=response)
        for callback in callbacks:
            try:
                callback()
            except Retry as retry:  # a worker would run it again after the countdown
                delivery.retried.append(retry)
        return delivery
