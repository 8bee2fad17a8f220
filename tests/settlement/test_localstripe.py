"""Top-ups against localstripe over real HTTP, credited by its real signed webhooks.

localstripe sends each webhook about a second after the event, once, to this test's live server;
the tests poll for the outcome. It never emits charge or refund events (NOTES.md), so refunds
are covered with hand-signed events in test_webhooks.py, not here.
"""

import httpx
import pytest

from settlement.models import LedgerAccount, LedgerTransaction, StripeEvent, TopUp
from settlement.selectors import account_balance
from settlement.services import ledger_check, platform_account
from tests.localstripe import poll

Kind = LedgerAccount.Kind
pytestmark = [pytest.mark.localstripe, pytest.mark.django_db(transaction=True)]


def _post(client, body: dict, key: str | None = None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    response = client.post("/api/v1/topups", body, format="json", **headers)
    assert response.status_code == 201, response.json()
    return response.json()


def _settled(topup_id: int, status: str) -> bool:
    return TopUp.objects.get(pk=topup_id).status == status


def _processed(event_type: str) -> StripeEvent | None:
    return StripeEvent.objects.filter(type=event_type, status=StripeEvent.Status.PROCESSED).first()


def test_a_visa_topup_is_credited_by_the_signed_webhook(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])

    body = _post(client, {"amount": "50.00", "payment_method": "pm_card_visa"}, key="visa-topup-1")

    assert body["status"] == "pending"  # the confirmation alone never credits
    poll(lambda: _settled(body["id"], TopUp.Status.SUCCEEDED))
    topup = TopUp.objects.get(pk=body["id"])
    assert topup.stripe_payment_intent_id.startswith("pi_")
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 50_000_000
    assert platform_account(kind=Kind.STRIPE_CLEARING).balance_micro == -50_000_000

    txn = LedgerTransaction.objects.get()
    assert (txn.kind, txn.reference, txn.idempotency_key) == (
        LedgerTransaction.Kind.TOPUP,
        f"topup:{topup.id}",
        f"topup:{topup.id}:credit",
    )
    assert sorted(txn.entries.values_list("account__kind", "amount_micro")) == [
        ("available", 50_000_000),
        ("stripe_clearing", -50_000_000),
    ]

    event = StripeEvent.objects.get(type="payment_intent.succeeded")
    assert event.stripe_id.startswith("evt_")
    assert (event.status, event.attempts, event.last_error) == ("processed", 1, "")
    assert event.payload["data"]["object"]["id"] == topup.stripe_payment_intent_id
    assert event.processed_at is not None
    assert ledger_check() == []


def test_the_credit_shows_in_the_api_ledger_as_one_entry(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])

    body = _post(client, {"amount": "25.00", "payment_method": "pm_card_visa"})
    poll(lambda: _settled(body["id"], TopUp.Status.SUCCEEDED))

    ledger = client.get("/api/v1/ledger").json()["results"]
    assert [(e["kind"], e["account"], e["amount"]) for e in ledger] == [
        ("topup", "available", "25.000000")
    ]
    assert client.get(f"/api/v1/topups/{body['id']}").json()["status"] == "succeeded"
    assert ledger_check() == []


def test_a_declined_card_credits_nothing_and_the_topup_ends_failed(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])

    body = _post(client, {"amount": "50.00", "payment_method": "pm_card_chargeCustomerFail"})

    assert body["status"] == "failed"
    # localstripe also sends payment_intent.payment_failed; wait until it has been applied.
    poll(lambda: _processed("payment_intent.payment_failed"))
    topup = TopUp.objects.get(pk=body["id"])
    assert topup.status == TopUp.Status.FAILED
    assert topup.failure_message
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 0
    assert not LedgerTransaction.objects.exists()
    assert not StripeEvent.objects.filter(type="payment_intent.succeeded").exists()
    assert ledger_check() == []


def test_a_retry_with_the_same_key_makes_one_payment(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    request = {"amount": "30.00", "payment_method": "pm_card_visa"}

    first = _post(client, request, key="retry-once-1")
    second = _post(client, request, key="retry-once-1")

    assert second["id"] == first["id"]
    poll(lambda: _settled(first["id"], TopUp.Status.SUCCEEDED))
    assert TopUp.objects.count() == 1
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 30_000_000
    assert ledger_check() == []


def test_a_client_confirmed_payment_intent_is_credited_by_the_webhook(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    body = _post(client, {"amount": "40.00"})
    assert body["status"] == "pending"
    assert body["client_secret"]

    # What Stripe.js does in the browser with the client secret, as plain HTTP (localstripe wants
    # the payment method set before the confirmation, not passed to it).
    intent_url = f"{localstripe.api_base}/v1/payment_intents/{body['stripe_payment_intent_id']}"
    auth = {"Authorization": "Bearer sk_test_payer"}
    httpx.post(intent_url, data={"payment_method": "pm_card_visa"}, headers=auth).raise_for_status()
    httpx.post(f"{intent_url}/confirm", headers=auth).raise_for_status()

    poll(lambda: _settled(body["id"], TopUp.Status.SUCCEEDED))
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 40_000_000
    assert ledger_check() == []
