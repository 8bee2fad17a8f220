"""Starting a card top-up: validation, idempotency, outages and declines, by service and API.

Stripe is faked at settlement.stripe_gateway, the edge we own: the fake replaces that module's
functions and records each call, so a test can tell one payment from two and see the idempotency
key Stripe would get. Everything behind the gateway (services, transactions, ledger) is real.
"""

import threading

import pytest
from django.db import connection

from accounts.principal import Principal
from core.errors import IdempotencyKeyReused, ValidationFailed
from settlement import stripe_gateway
from settlement.errors import PaymentMethodNotAllowed, PaymentProviderError, TopUpAmountOutOfRange
from settlement.models import LedgerAccount, LedgerTransaction, TopUp
from settlement.selectors import account_balance
from settlement.services import (
    ledger_check,
    stripe_event_process,
    stripe_event_record,
    topup_create,
)
from tests.accounts.factories import MembershipFactory
from tests.settlement import stripe_events as se

pytestmark = pytest.mark.django_db
Kind = LedgerAccount.Kind


class FakeGateway:
    """Stands in for settlement.stripe_gateway; `outages` and `decline` script its answers."""

    def __init__(self):
        self.created: list[dict] = []
        self.confirmed: list[dict] = []
        self.sessions: list[dict] = []
        self.outages: dict[str, int] = {}  # call name -> how many calls fail before one works
        self.decline = False
        self.on_create = None  # runs after Stripe "made" the intent, before we record it

    def _maybe_fail(self, name: str) -> None:
        if self.outages.get(name, 0) > 0:
            self.outages[name] -= 1
            raise PaymentProviderError()

    def payment_intent_create(self, **kwargs):
        self._maybe_fail("payment_intent_create")
        self.created.append(kwargs)
        result = stripe_gateway.PaymentIntentResult(
            id=f"pi_fake_{kwargs['metadata']['topup_id']}",
            client_secret=f"pi_fake_{kwargs['metadata']['topup_id']}_secret_x",
            status="requires_confirmation"
            if kwargs.get("payment_method")
            else "requires_payment_method",
        )
        if self.on_create:
            self.on_create(result)
        return result

    def payment_intent_confirm(self, *, payment_intent_id, idempotency_key):
        self._maybe_fail("payment_intent_confirm")
        self.confirmed.append({"id": payment_intent_id, "idempotency_key": idempotency_key})
        if self.decline:
            raise stripe_gateway.CardDeclined("Your card was declined.", "card_declined")
        return "processing"

    def checkout_session_create(self, **kwargs):
        self._maybe_fail("checkout_session_create")
        self.sessions.append(kwargs)
        return stripe_gateway.CheckoutSessionResult(
            id=f"cs_fake_{kwargs['client_reference_id']}",
            url=f"https://checkout.stripe.test/c/{kwargs['client_reference_id']}",
        )


@pytest.fixture
def gateway(monkeypatch, settings) -> FakeGateway:
    settings.STRIPE_TOPUP_MODE = "payment_intent"
    settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS = True
    settings.TOPUP_MIN_MICRO = 5_000_000
    settings.TOPUP_MAX_MICRO = 10_000_000_000
    fake = FakeGateway()
    for name in ("payment_intent_create", "payment_intent_confirm", "checkout_session_create"):
        monkeypatch.setattr(stripe_gateway, name, getattr(fake, name))
    return fake


def _create(principal, amount_micro=50_000_000, **kwargs) -> TopUp:
    return topup_create(principal=principal, amount_micro=amount_micro, **kwargs)


def _available(principal) -> int:
    return account_balance(org_id=principal.org.id, kind=Kind.AVAILABLE)


# Validation


@pytest.mark.parametrize("amount_micro", [4_990_000, 0, -5_000_000])
def test_an_amount_below_the_minimum_is_refused(gateway, buyer, amount_micro):
    with pytest.raises(TopUpAmountOutOfRange) as refused:
        _create(buyer, amount_micro=amount_micro)

    assert refused.value.code == "amount_out_of_range"
    assert "amount" in refused.value.fields
    assert not TopUp.objects.exists()
    assert gateway.created == []


def test_an_amount_above_the_maximum_is_refused(gateway, buyer):
    with pytest.raises(TopUpAmountOutOfRange) as refused:
        _create(buyer, amount_micro=10_000_010_000)

    assert refused.value.code == "amount_out_of_range"
    assert not TopUp.objects.exists()
    assert gateway.created == []


def test_the_limits_themselves_are_accepted(gateway, buyer):
    _create(buyer, amount_micro=5_000_000, idempotency_key="at-the-minimum")
    _create(buyer, amount_micro=10_000_000_000, idempotency_key="at-the-maximum")

    assert [c["amount_cents"] for c in gateway.created] == [500, 1_000_000]


def test_a_fraction_of_a_cent_is_refused(gateway, buyer):
    with pytest.raises(ValidationFailed) as refused:
        _create(buyer, amount_micro=50_000_001)

    assert refused.value.code == "invalid"
    assert refused.value.fields["amount"] == ["amount must be a whole number of cents"]
    assert not TopUp.objects.exists()


# Creating and retrying


def test_a_new_topup_waits_for_payment_and_credits_nothing(gateway, buyer):
    topup = _create(buyer, idempotency_key="first-topup")

    assert topup.status == TopUp.Status.PENDING
    assert topup.stripe_payment_intent_id == f"pi_fake_{topup.id}"
    assert topup.client_secret == f"pi_fake_{topup.id}_secret_x"
    assert gateway.created == [
        {
            "amount_cents": 5_000,
            "currency": "USD",
            "idempotency_key": f"topup-{topup.id}-intent",
            "metadata": {"topup_id": str(topup.id), "org_id": str(buyer.org.id)},
            "payment_method": None,
        }
    ]
    assert gateway.confirmed == []  # the client confirms with the client secret
    assert _available(buyer) == 0
    assert not LedgerTransaction.objects.exists()


def test_the_same_idempotency_key_returns_the_first_topup_and_calls_stripe_once(gateway, buyer):
    first = _create(buyer, idempotency_key="same-key-1")
    second = _create(buyer, idempotency_key="same-key-1")

    assert second.id == first.id
    assert TopUp.objects.count() == 1
    assert len(gateway.created) == 1


def test_the_same_key_with_another_amount_is_refused(gateway, buyer):
    _create(buyer, idempotency_key="same-key-2")

    with pytest.raises(IdempotencyKeyReused) as refused:
        _create(buyer, amount_micro=60_000_000, idempotency_key="same-key-2")

    assert refused.value.code == "idempotency_key_reused"
    assert TopUp.objects.get().amount_micro == 50_000_000
    assert len(gateway.created) == 1


def test_the_same_key_in_another_org_is_another_topup(gateway, buyer):
    stranger = MembershipFactory()

    mine = _create(buyer, idempotency_key="shared-key")
    theirs = _create(Principal.for_membership(stranger), idempotency_key="shared-key")

    assert mine.id != theirs.id
    assert len(gateway.created) == 2


def test_an_outage_leaves_the_topup_created_and_the_retry_resumes_with_the_same_key(gateway, buyer):
    gateway.outages["payment_intent_create"] = 1

    with pytest.raises(PaymentProviderError):
        _create(buyer, idempotency_key="outage-key")
    stuck = TopUp.objects.get()
    assert (stuck.status, stuck.stripe_payment_intent_id) == (TopUp.Status.CREATED, None)

    resumed = _create(buyer, idempotency_key="outage-key")

    assert resumed.id == stuck.id
    assert resumed.status == TopUp.Status.PENDING
    assert [c["idempotency_key"] for c in gateway.created] == [f"topup-{stuck.id}-intent"]
    assert _available(buyer) == 0


def test_an_outage_while_confirming_is_resumed_without_a_second_payment_intent(gateway, buyer):
    gateway.outages["payment_intent_confirm"] = 1

    with pytest.raises(PaymentProviderError):
        _create(buyer, idempotency_key="confirm-outage", payment_method="pm_card_visa")
    stuck = TopUp.objects.get()
    assert (stuck.status, stuck.stripe_payment_intent_id) == (
        TopUp.Status.CREATED,
        f"pi_fake_{stuck.id}",
    )

    resumed = _create(buyer, idempotency_key="confirm-outage", payment_method="pm_card_visa")

    assert resumed.status == TopUp.Status.PENDING
    assert len(gateway.created) == 1
    assert gateway.confirmed == [
        {"id": f"pi_fake_{stuck.id}", "idempotency_key": f"topup-{stuck.id}-confirm"}
    ]


def test_a_confirmed_topup_is_not_confirmed_again_on_retry(gateway, buyer):
    _create(buyer, idempotency_key="confirm-once", payment_method="pm_card_visa")
    _create(buyer, idempotency_key="confirm-once", payment_method="pm_card_visa")

    assert len(gateway.created) == 1
    assert len(gateway.confirmed) == 1


def test_a_declined_card_fails_the_topup_without_credit(gateway, buyer):
    gateway.decline = True

    topup = _create(buyer, idempotency_key="declined", payment_method="pm_card_chargeCustomerFail")

    assert topup.status == TopUp.Status.FAILED
    assert topup.failure_message == "Your card was declined."
    assert _available(buyer) == 0
    assert not LedgerTransaction.objects.exists()
    assert ledger_check() == []


def test_a_retry_of_a_declined_topup_returns_it_without_calling_stripe(gateway, buyer):
    gateway.decline = True
    first = _create(buyer, idempotency_key="declined-2", payment_method="pm_card_visa")

    again = _create(buyer, idempotency_key="declined-2", payment_method="pm_card_visa")

    assert (again.id, again.status) == (first.id, TopUp.Status.FAILED)
    assert (len(gateway.created), len(gateway.confirmed)) == (1, 1)


def test_a_webhook_that_beats_our_record_of_the_intent_keeps_its_success(gateway, buyer):
    def webhook_arrives(intent) -> None:
        topup = TopUp.objects.get()
        payload = se.event(
            "payment_intent.succeeded", se.payment_intent(topup, intent_id=intent.id)
        )
        event, _ = stripe_event_record(event=payload)
        stripe_event_process(stripe_event_id=event.id)

    gateway.on_create = webhook_arrives

    topup = _create(buyer, idempotency_key="raced")

    assert topup.status == TopUp.Status.SUCCEEDED  # not pushed back to pending
    assert topup.stripe_payment_intent_id == f"pi_fake_{topup.id}"
    assert topup.client_secret == f"pi_fake_{topup.id}_secret_x"
    assert _available(buyer) == 50_000_000
    assert ledger_check() == []


def test_checkout_mode_returns_the_checkout_url(gateway, buyer, settings):
    settings.STRIPE_TOPUP_MODE = "checkout"

    topup = _create(buyer, idempotency_key="checkout-1")

    assert topup.method == TopUp.Method.CHECKOUT
    assert topup.status == TopUp.Status.PENDING
    assert topup.checkout_url == f"https://checkout.stripe.test/c/{topup.id}"
    assert topup.stripe_checkout_session_id == f"cs_fake_{topup.id}"
    (session,) = gateway.sessions
    assert session["idempotency_key"] == f"topup-{topup.id}-checkout"
    assert session["client_reference_id"] == str(topup.id)
    assert session["amount_cents"] == 5_000
    assert session["success_url"].endswith(f"/topups/{topup.id}/")
    assert gateway.created == []
    assert _available(buyer) == 0


def test_a_checkout_outage_is_resumed_by_the_retry(gateway, buyer, settings):
    settings.STRIPE_TOPUP_MODE = "checkout"
    gateway.outages["checkout_session_create"] = 1

    with pytest.raises(PaymentProviderError):
        _create(buyer, idempotency_key="checkout-outage")
    topup = _create(buyer, idempotency_key="checkout-outage")

    assert topup.status == TopUp.Status.PENDING
    assert topup.checkout_url
    assert len(gateway.sessions) == 1


def test_a_test_payment_method_is_refused_when_they_are_not_allowed(gateway, buyer, settings):
    settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS = False

    with pytest.raises(PaymentMethodNotAllowed) as refused:
        _create(buyer, payment_method="pm_card_visa")

    assert refused.value.code == "payment_method_not_allowed"
    assert not TopUp.objects.exists()
    assert gateway.created == []


def test_a_test_payment_method_is_refused_in_checkout_mode(gateway, buyer, settings):
    settings.STRIPE_TOPUP_MODE = "checkout"

    with pytest.raises(PaymentMethodNotAllowed):
        _create(buyer, payment_method="pm_card_visa")

    assert gateway.sessions == []


# Through the API


def _post(client, body: dict, key: str | None = None):
    headers = {"HTTP_IDEMPOTENCY_KEY": key} if key else {}
    return client.post("/api/v1/topups", body, format="json", **headers)


def test_the_api_answers_201_with_the_topup(gateway, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade"])

    response = _post(client, {"amount": "50.00"}, key="api-topup-1")

    assert response.status_code == 201
    body = response.json()
    topup = TopUp.objects.get()
    assert body == {
        "id": topup.id,
        "status": "pending",
        "amount": "50.000000",
        "currency": "USD",
        "method": "payment_intent",
        "stripe_payment_intent_id": f"pi_fake_{topup.id}",
        "client_secret": f"pi_fake_{topup.id}_secret_x",
        "checkout_url": "",
        "failure_message": "",
        "refunded": "0.000000",
        "created_at": body["created_at"],
        "succeeded_at": None,
    }
    assert client.get("/api/v1/balances").json()[0]["available"] == "0.000000"


def test_the_api_returns_the_first_answer_to_a_retry(gateway, buyer, api_for):
    client = api_for(buyer, scopes=["trade"])

    first = _post(client, {"amount": "50.00"}, key="api-retry-1")
    second = _post(client, {"amount": "50.00"}, key="api-retry-1")

    assert (first.status_code, second.status_code) == (201, 201)
    assert second.json()["id"] == first.json()["id"]
    assert len(gateway.created) == 1


def test_the_api_answers_409_to_a_reused_key(gateway, buyer, api_for):
    client = api_for(buyer, scopes=["trade"])
    _post(client, {"amount": "50.00"}, key="api-reused-1")

    response = _post(client, {"amount": "75.00"}, key="api-reused-1")

    assert response.status_code == 409
    assert response.json()["error"]["code"] == "idempotency_key_reused"
    assert TopUp.objects.count() == 1


def test_the_api_answers_400_to_a_fraction_of_a_cent(gateway, buyer, api_for):
    response = _post(api_for(buyer, scopes=["trade"]), {"amount": "50.005"})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert list(error["fields"]) == ["amount"]
    assert not TopUp.objects.exists()


@pytest.mark.parametrize("amount", ["4.99", "10000.01"])
def test_the_api_answers_400_to_an_amount_out_of_range(gateway, buyer, api_for, amount):
    response = _post(api_for(buyer, scopes=["trade"]), {"amount": amount})

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "amount_out_of_range"
    assert error["message"] == "A top-up is between $5.00 and $10,000.00."
    assert "amount" in error["fields"]
    assert not TopUp.objects.exists()


def test_the_api_answers_400_to_a_test_payment_method_when_not_allowed(
    gateway, buyer, api_for, settings
):
    settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS = False

    response = _post(
        api_for(buyer, scopes=["trade"]), {"amount": "50.00", "payment_method": "pm_card_visa"}
    )

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "payment_method_not_allowed"
    assert gateway.created == []


def test_the_api_answers_502_to_an_outage_and_the_retry_succeeds(gateway, buyer, api_for):
    client = api_for(buyer, scopes=["trade"])
    gateway.outages["payment_intent_create"] = 1

    outage = _post(client, {"amount": "50.00"}, key="api-outage-1")
    retry = _post(client, {"amount": "50.00"}, key="api-outage-1")

    assert outage.status_code == 502
    assert outage.json()["error"]["code"] == "payment_provider_unavailable"
    assert (retry.status_code, retry.json()["status"]) == (201, "pending")
    assert TopUp.objects.count() == 1


def test_the_api_reports_a_declined_card_as_a_failed_topup(gateway, buyer, api_for):
    gateway.decline = True

    response = _post(
        api_for(buyer, scopes=["trade"]), {"amount": "50.00", "payment_method": "pm_card_visa"}
    )

    assert response.status_code == 201  # the top-up exists; its payment failed
    assert (response.json()["status"], response.json()["failure_message"]) == (
        "failed",
        "Your card was declined.",
    )
    assert _available(buyer) == 0


def test_the_api_in_checkout_mode_returns_the_checkout_url(gateway, buyer, api_for, settings):
    settings.STRIPE_TOPUP_MODE = "checkout"

    response = _post(api_for(buyer, scopes=["trade"]), {"amount": "20.00"})

    assert response.status_code == 201
    body = response.json()
    assert (body["method"], body["status"]) == ("checkout", "pending")
    assert body["checkout_url"] == f"https://checkout.stripe.test/c/{body['id']}"


def test_the_api_needs_the_trade_scope_to_top_up(gateway, buyer, api_for):
    response = _post(api_for(buyer, scopes=["read"]), {"amount": "50.00"})

    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"
    assert not TopUp.objects.exists()
    assert gateway.created == []


def test_the_api_needs_a_key(gateway, client):
    response = client.post("/api/v1/topups", {"amount": "50.00"}, content_type="application/json")

    assert response.status_code == 401
    assert not TopUp.objects.exists()


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_retries_with_one_key_make_one_topup(gateway, buyer):
    barrier = threading.Barrier(6)
    results: list = [None] * 6

    def retry(i: int) -> None:
        try:
            barrier.wait()
            results[i] = _create(buyer, idempotency_key="double-click").id
        except Exception as error:
            results[i] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=retry, args=(i,)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    topup = TopUp.objects.get()
    assert results == [topup.id] * 6
    assert topup.status == TopUp.Status.PENDING
    # Threads that saw the row still `created` may each have asked Stripe, always under the one
    # key built from the row id, which Stripe answers with the one PaymentIntent.
    assert {c["idempotency_key"] for c in gateway.created} == {f"topup-{topup.id}-intent"}
