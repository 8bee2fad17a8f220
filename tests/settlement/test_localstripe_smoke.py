import pytest

from settlement.models import StripeEvent, TopUp
from settlement.selectors import account_balance
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
