import uuid

import pytest

from accounts.models import Role
from settlement import stripe_gateway
from settlement.models import TopUp
from settlement.selectors import account_balance
from settlement.services import ledger_check, stripe_event_process, stripe_event_record
from tests.accounts.factories import MembershipFactory

pytestmark = pytest.mark.django_db


class FakeStripe:
    """Stands in for settlement.stripe_gateway, the edge we own; everything behind it is real.

    It records each call so tests can tell one payment from two.
    """

    def __init__(self, *, decline: bool = False):
        self.decline = decline
        self.created: list[dict] = []
        self.confirmed: list[str] = []
        self.sessions: list[dict] = []

    def payment_intent_create(self, **kwargs):
        self.created.append(kwargs)
        return stripe_gateway.PaymentIntentResult(
            id=f"pi_{len(self.created)}", client_secret="pi_secret", status="requires_confirmation"
        )

    def payment_intent_confirm(self, *, payment_intent_id, idempotency_key):
        self.confirmed.append(payment_intent_id)
        if self.decline:
            raise stripe_gateway.CardDeclined("Your card was declined.", "card_declined")
        return "processing"

    def checkout_session_create(self, **kwargs):
        self.sessions.append(kwargs)
        return stripe_gateway.CheckoutSessionResult(
            id="cs_test_1", url="https://checkout.stripe.test/c/cs_test_1"
        )


@pytest.fixture
def fake_stripe(monkeypatch, settings):
    settings.STRIPE_TOPUP_MODE = "payment_intent"
    settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS = True
    fake = FakeStripe()
    for name in ["payment_intent_create", "payment_intent_confirm", "checkout_session_create"]:
        monkeypatch.setattr(stripe_gateway, name, getattr(fake, name))
    return fake


def _form(amount="50.00", payment_method="pm_card_visa", key=None) -> dict:
    return {
        "amount": amount,
        "payment_method": payment_method,
        "idempotency_key": key or str(uuid.uuid4()),
    }


def test_topup_form_carries_a_fresh_idempotency_key_each_time(member_client, fake_stripe):
    client, _ = member_client(role=Role.TRADER)

    first = client.get("/topups/new/").context["form"]["idempotency_key"].value()
    second = client.get("/topups/new/").context["form"]["idempotency_key"].value()

    assert uuid.UUID(str(first)) != uuid.UUID(str(second))


def test_topup_form_shows_limits_and_test_cards(member_client, fake_stripe, settings):
    settings.TOPUP_MIN_MICRO = 5_000_000
    settings.TOPUP_MAX_MICRO = 10_000_000_000
    client, _ = member_client(role=Role.TRADER)

    html = client.get("/topups/new/").content.decode()

    assert "Between $5.00 and $10,000.00" in html
    assert 'value="pm_card_visa"' in html
    assert "Visa 4242 — succeeds" in html
    assert "Card that is declined" in html


def test_topup_below_the_minimum_is_refused_on_the_form(member_client, fake_stripe, settings):
    settings.TOPUP_MIN_MICRO = 5_000_000
    client, _ = member_client(role=Role.TRADER)

    response = client.post("/topups/new/", _form(amount="4.99"))

    assert response.status_code == 200
    assert "Between $5.00 and" in str(response.context["form"].errors["amount"])
    assert not TopUp.objects.exists()
    assert fake_stripe.created == []


def test_topup_in_fractions_of_a_cent_is_refused(member_client, fake_stripe):
    client, _ = member_client(role=Role.TRADER)

    response = client.post("/topups/new/", _form(amount="50.001"))

    assert response.context["form"].errors["amount"] == ["Use whole cents, such as 50.00."]
    assert not TopUp.objects.exists()


def test_topup_amount_that_is_not_a_number_is_refused(member_client, fake_stripe):
    client, _ = member_client(role=Role.TRADER)

    response = client.post("/topups/new/", _form(amount="fifty"))

    assert response.context["form"].errors["amount"] == [
        "Enter an amount in US dollars, such as 50.00."
    ]
    assert not TopUp.objects.exists()


def test_viewer_sees_no_topup_form(member_client, fake_stripe):
    client, _ = member_client(role=Role.VIEWER)

    response = client.get("/topups/new/")

    assert response.status_code == 200
    assert response.context["form"] is None
    assert 'name="amount"' not in response.content.decode()


def test_viewer_posting_a_topup_is_refused(member_client, fake_stripe):
    client, _ = member_client(role=Role.VIEWER)

    response = client.post("/topups/new/", _form())

    assert response.status_code == 403
    assert not TopUp.objects.exists()
    assert fake_stripe.created == []


def test_topup_submit_starts_a_payment_and_shows_it_pending(member_client, fake_stripe):
    client, membership = member_client(role=Role.TRADER)

    response = client.post("/topups/new/", _form(amount="50.00"))

    topup = TopUp.objects.get()
    assert response.status_code == 302
    assert response.url == f"/topups/{topup.id}/"
    assert (topup.org_id, topup.amount_micro, topup.status) == (
        membership.org_id,
        50_000_000,
        TopUp.Status.PENDING,
    )
    assert fake_stripe.created[0]["amount_cents"] == 5000
    assert fake_stripe.created[0]["payment_method"] == "pm_card_visa"
    # The page never credits: only the verified webhook does.
    assert account_balance(org_id=membership.org_id, kind="available") == 0
    detail = client.get(response.url).content.decode()
    assert 'data-status="pending"' in detail
    assert f'hx-get="/topups/{topup.id}/status/"' in detail


def test_double_submit_of_one_form_pays_once(member_client, fake_stripe):
    client, _ = member_client(role=Role.TRADER)
    form = _form(amount="25.00")

    first = client.post("/topups/new/", form)
    second = client.post("/topups/new/", form)

    assert TopUp.objects.count() == 1
    assert first.url == second.url
    assert len(fake_stripe.created) == 1
    assert len(fake_stripe.confirmed) == 1


def test_declined_card_shows_the_failure(member_client, fake_stripe):
    fake_stripe.decline = True
    client, _ = member_client(role=Role.TRADER)

    response = client.post("/topups/new/", _form(payment_method="pm_card_chargeCustomerFail"))
    detail = client.get(response.url).content.decode()

    assert TopUp.objects.get().status == TopUp.Status.FAILED
    assert 'data-status="failed"' in detail
    assert "Your card was declined." in detail
    assert "hx-get" not in detail  # final: the page stops polling
    assert 'data-testid="available-balance">$0.00<' in detail


def test_status_partial_shows_the_credited_balance_once_the_webhook_ran(member_client, fake_stripe):
    client, membership = member_client(role=Role.TRADER)
    client.post("/topups/new/", _form(amount="50.00"))
    topup = TopUp.objects.get()
    event, _ = stripe_event_record(
        event={
            "id": "evt_portal_1",
            "type": "payment_intent.succeeded",
            "created": 1,
            "data": {
                "object": {
                    "id": topup.stripe_payment_intent_id,
                    "amount": 5000,
                    "currency": "usd",
                    "metadata": {"topup_id": str(topup.id)},
                }
            },
        }
    )
    stripe_event_process(stripe_event_id=event.id)

    partial = client.get(f"/topups/{topup.id}/status/").content.decode()

    assert partial.lstrip().startswith('<div id="topup-status"')
    assert 'data-status="succeeded"' in partial
    assert 'data-testid="available-balance">$50.00<' in partial
    assert "hx-get" not in partial
    assert account_balance(org_id=membership.org_id, kind="available") == 50_000_000
    assert ledger_check() == []


def test_another_orgs_topup_is_not_found(member_client, fake_stripe):
    client, _ = member_client(role=Role.TRADER)
    stranger = MembershipFactory(role=Role.OWNER)
    topup = TopUp.objects.create(
        org=stranger.org, amount_micro=10_000_000, method="payment_intent", idempotency_key="k"
    )

    assert client.get(f"/topups/{topup.id}/").status_code == 404
    assert client.get(f"/topups/{topup.id}/status/").status_code == 404


def test_topup_page_lists_the_org_topups(member_client, fake_stripe):
    client, _ = member_client(role=Role.TRADER)
    client.post("/topups/new/", _form(amount="12.34"))

    html = client.get("/topups/new/").content.decode()

    topup = TopUp.objects.get()
    assert f'href="/topups/{topup.id}/"' in html
    assert "$12.34" in html


def test_checkout_mode_redirects_to_stripe(member_client, fake_stripe, settings):
    settings.STRIPE_TOPUP_MODE = "checkout"
    client, _ = member_client(role=Role.TRADER)

    response = client.post("/topups/new/", {"amount": "30.00", "idempotency_key": uuid.uuid4()})

    assert response.status_code == 302
    assert response.url == "https://checkout.stripe.test/c/cs_test_1"
    assert fake_stripe.sessions[0]["amount_cents"] == 3000
    assert fake_stripe.created == []


def test_without_test_cards_or_checkout_the_portal_takes_no_card(
    member_client, fake_stripe, settings
):
    settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS = False
    client, _ = member_client(role=Role.TRADER)

    page = client.get("/topups/new/")
    refused = client.post("/topups/new/", _form())

    assert page.context["form"] is None
    assert refused.status_code == 403
    assert not TopUp.objects.exists()
