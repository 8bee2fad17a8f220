import pytest

from settlement.models import StripeEvent, TopUp
from settlement.selectors import account_balance
from settlement.services import ledger_check
from tests.localstripe import poll


@pytest.mark.localstripe
@pytest.mark.django_db(transaction=True)
def test_visa_topup_is_credited_by_the_signed_webhook(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    response = client.post(
        "/api/v1/topups",
        {"amount": "50.00", "payment_method": "pm_card_visa"},
        format="json",
        HTTP_IDEMPOTENCY_KEY="smoke-topup-1",
    )
    assert response.status_code == 201, response.json()
    topup_id = response.json()["id"]
    poll(lambda: TopUp.objects.get(pk=topup_id).status == TopUp.Status.SUCCEEDED)
    assert account_balance(org_id=buyer.org.id, kind="available") == 50_000_000
    assert StripeEvent.objects.filter(type="payment_intent.succeeded").count() == 1


@pytest.mark.localstripe
@pytest.mark.django_db(transaction=True)
def test_a_declined_card_credits_nothing(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    response = client.post(
        "/api/v1/topups",
        {"amount": "50.00", "payment_method": "pm_card_chargeCustomerFail"},
        format="json",
    )
    assert response.status_code == 201, response.json()
    topup_id = response.json()["id"]
    assert response.json()["status"] == "failed"
    # localstripe also sends payment_intent.payment_failed; wait for it to be processed.
    poll(lambda: StripeEvent.objects.filter(type="payment_intent.payment_failed").exists())
    poll(
        lambda: StripeEvent.objects.filter(
            type="payment_intent.payment_failed", status=StripeEvent.Status.PROCESSED
        ).exists()
    )
    assert TopUp.objects.get(pk=topup_id).status == TopUp.Status.FAILED
    assert account_balance(org_id=buyer.org.id, kind="available") == 0
    assert ledger_check() == []


@pytest.mark.localstripe
@pytest.mark.django_db(transaction=True)
def test_the_credit_is_one_balanced_ledger_transaction(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])
    response = client.post(
        "/api/v1/topups", {"amount": "25.00", "payment_method": "pm_card_visa"}, format="json"
    )
    topup_id = response.json()["id"]
    poll(lambda: TopUp.objects.get(pk=topup_id).status == TopUp.Status.SUCCEEDED)
    ledger = client.get("/api/v1/ledger").json()["results"]
    assert [(e["kind"], e["account"], e["amount"]) for e in ledger] == [
        ("topup", "available", "25.000000")
    ]
    assert ledger_check() == []
