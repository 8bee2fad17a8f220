"""The Stripe webhook: verification, storing once, and crediting exactly once."""

import json
import time

import pytest
from celery.exceptions import Retry
from django.test import Client

from settlement.models import LedgerAccount, StripeEvent, TopUp
from settlement.selectors import account_balance
from settlement.services import ledger_check, platform_account
from settlement.tasks import stripe_events_redrive_task
from tests.accounts.factories import UserFactory
from tests.settlement import signed_events as se

Kind = LedgerAccount.Kind
SECRET = "whsec_unit_test"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET


class _Client(Client):
    """A test client whose requests also run what they queue on commit (the processing task).

    The test's own transaction never commits, so on-commit callbacks are captured and run here.
    """

    def __init__(self, capture):
        super().__init__()
        self._capture = capture

    def post(self, *args, **kwargs):
        with self._capture(execute=True):
            return super().post(*args, **kwargs)


@pytest.fixture
def client(django_capture_on_commit_callbacks):
    return _Client(django_capture_on_commit_callbacks)


@pytest.fixture
def topup(buyer):
    return TopUp.objects.create(
        org=buyer.org,
        created_by=buyer.user,
        amount_micro=50_000_000,
        method=TopUp.Method.PAYMENT_INTENT,
        status=TopUp.Status.PENDING,
        idempotency_key="k-1",
        request_fingerprint="f",
        stripe_payment_intent_id="pi_test_1",
    )


def _available(topup) -> int:
    return account_balance(org_id=topup.org_id, kind=Kind.AVAILABLE)


def test_a_verified_success_credits_the_topup(client, topup):
    response = se.post_event(
        client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
    )
    assert response.status_code == 200
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert _available(topup) == 50_000_000
    assert platform_account(kind=Kind.STRIPE_CLEARING).balance_micro == -50_000_000
    assert ledger_check() == []


def test_a_bad_signature_is_refused_and_nothing_is_stored(client, topup):
    payload = se.event("payment_intent.succeeded", se.payment_intent(topup))
    body = json.dumps(payload).encode()
    response = client.post(
        "/stripe/webhook/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=se.signature_header(body, "whsec_someone_else"),
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()
    assert _available(topup) == 0


def test_a_missing_signature_is_refused(client, topup):
    response = client.post("/stripe/webhook/", data=b"{}", content_type="application/json")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_signature"


def test_a_replayed_event_older_than_the_tolerance_is_refused(client, topup, settings):
    old = int(time.time()) - settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS - 60
    payload = se.event("payment_intent.succeeded", se.payment_intent(topup))
    response = se.post_event(client, payload, secret=SECRET, timestamp=old)
    assert response.status_code == 400
    assert not StripeEvent.objects.exists()


def test_a_body_that_is_not_json_is_refused(client):
    body = b"not json"
    response = client.post(
        "/stripe/webhook/",
        data=body,
        content_type="application/json",
        HTTP_STRIPE_SIGNATURE=se.signature_header(body, SECRET),
    )
    assert response.status_code == 400


def test_the_same_event_delivered_twice_credits_once(client, topup):
    payload = se.event("payment_intent.succeeded", se.payment_intent(topup))
    first = se.post_event(client, payload, secret=SECRET)
    second = se.post_event(client, payload, secret=SECRET)
    assert (first.json()["duplicate"], second.json()["duplicate"]) == (False, True)
    assert StripeEvent.objects.count() == 1
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_two_success_events_for_one_payment_credit_once(client, topup):
    for _ in range(2):
        se.post_event(
            client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
        )
    assert StripeEvent.objects.filter(status=StripeEvent.Status.PROCESSED).count() == 2
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_a_failure_arriving_after_the_success_changes_nothing(client, topup):
    se.post_event(
        client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
    )
    failed = se.payment_intent(topup, status="requires_payment_method", error="declined")
    se.post_event(client, se.event("payment_intent.payment_failed", failed), secret=SECRET)
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert _available(topup) == 50_000_000


def test_a_success_after_a_failure_credits(client, topup):
    failed = se.payment_intent(topup, status="requires_payment_method", error="declined")
    se.post_event(client, se.event("payment_intent.payment_failed", failed), secret=SECRET)
    topup.refresh_from_db()
    assert (topup.status, topup.failure_message) == (TopUp.Status.FAILED, "declined")
    se.post_event(
        client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
    )
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_an_amount_that_does_not_match_is_not_credited_and_is_flagged(client, topup):
    payload = se.event("payment_intent.succeeded", se.payment_intent(topup, amount_cents=100))
    with pytest.raises(Retry):  # eager mode surfaces the task's retry to the caller
        se.post_event(client, payload, secret=SECRET)
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED
    assert "expects" in event.last_error
    assert _available(topup) == 0


def test_a_failed_event_is_processed_again_by_the_redrive(client, topup, monkeypatch):
    from settlement.services import stripe_events

    original = stripe_events.HANDLERS["payment_intent.succeeded"]
    monkeypatch.setitem(
        stripe_events.HANDLERS,
        "payment_intent.succeeded",
        lambda event: (_ for _ in ()).throw(RuntimeError("database hiccup")),
    )
    payload = se.event("payment_intent.succeeded", se.payment_intent(topup))
    with pytest.raises(Retry):
        se.post_event(client, payload, secret=SECRET)
    assert StripeEvent.objects.get().status == StripeEvent.Status.FAILED
    monkeypatch.setitem(stripe_events.HANDLERS, "payment_intent.succeeded", original)
    StripeEvent.objects.update(received_at="2000-01-01T00:00:00Z")
    assert stripe_events_redrive_task() == 1
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    assert _available(topup) == 50_000_000


def test_an_event_type_we_do_not_handle_is_stored_and_ignored(client):
    se.post_event(client, se.event("customer.created", {"id": "cus_1"}), secret=SECRET)
    assert StripeEvent.objects.get().status == StripeEvent.Status.IGNORED


def test_a_success_for_an_unknown_payment_intent_credits_nobody(client, topup):
    topup.stripe_payment_intent_id = "pi_other"
    payload = se.event(
        "payment_intent.succeeded",
        {"id": "pi_unknown", "amount": 5000, "currency": "usd", "metadata": {}},
    )
    se.post_event(client, payload, secret=SECRET)
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    assert _available(topup) == 0
    assert ledger_check() == []


@pytest.fixture
def checkout_topup(buyer):
    return TopUp.objects.create(
        org=buyer.org,
        amount_micro=20_000_000,
        method=TopUp.Method.CHECKOUT,
        status=TopUp.Status.PENDING,
        idempotency_key="k-checkout",
        request_fingerprint="f",
        stripe_checkout_session_id="cs_test_1",
    )


def _session(topup, payment_status: str) -> dict:
    return {
        "id": "cs_test_1",
        "object": "checkout.session",
        "client_reference_id": str(topup.id),
        "payment_status": payment_status,
        "payment_intent": "pi_from_checkout",
        "amount_total": 2000,
        "currency": "usd",
    }


def test_a_paid_checkout_session_credits_once(client, checkout_topup):
    for _ in range(2):
        se.post_event(
            client,
            se.event("checkout.session.completed", _session(checkout_topup, "paid")),
            secret=SECRET,
        )
    checkout_topup.refresh_from_db()
    assert checkout_topup.status == TopUp.Status.SUCCEEDED
    assert checkout_topup.stripe_payment_intent_id == "pi_from_checkout"
    assert _available(checkout_topup) == 20_000_000
    assert ledger_check() == []


def test_an_unpaid_checkout_waits_for_the_async_payment(client, checkout_topup):
    se.post_event(
        client,
        se.event("checkout.session.completed", _session(checkout_topup, "unpaid")),
        secret=SECRET,
    )
    assert _available(checkout_topup) == 0
    se.post_event(
        client,
        se.event("checkout.session.async_payment_succeeded", _session(checkout_topup, "paid")),
        secret=SECRET,
    )
    assert _available(checkout_topup) == 20_000_000


def _refund(topup, refunded_cents: int) -> dict:
    return {
        "id": "ch_test_1",
        "object": "charge",
        "payment_intent": topup.stripe_payment_intent_id,
        "amount": topup.amount_micro // 10_000,
        "amount_refunded": refunded_cents,
        "currency": "usd",
    }


def test_partial_then_full_refunds_are_debited_by_their_difference(client, topup):
    se.post_event(
        client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
    )
    se.post_event(client, se.event("charge.refunded", _refund(topup, 1000)), secret=SECRET)
    assert _available(topup) == 40_000_000
    se.post_event(client, se.event("charge.refunded", _refund(topup, 1000)), secret=SECRET)
    assert _available(topup) == 40_000_000
    se.post_event(client, se.event("charge.refunded", _refund(topup, 5000)), secret=SECRET)
    topup.refresh_from_db()
    assert topup.refunded_micro == 50_000_000
    assert _available(topup) == 0
    assert platform_account(kind=Kind.STRIPE_CLEARING).balance_micro == 0
    assert ledger_check() == []


def test_a_refund_of_money_already_spent_books_the_shortfall_to_adjustments(client, topup, fund):
    se.post_event(
        client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
    )
    from django.db import transaction

    from settlement.services import hold_place

    with transaction.atomic():
        hold_place(org_id=topup.org_id, amount_micro=45_000_000, reference="order:1")
    se.post_event(client, se.event("charge.refunded", _refund(topup, 5000)), secret=SECRET)
    assert _available(topup) == 0
    assert platform_account(kind=Kind.ADJUSTMENTS).balance_micro == -45_000_000
    assert account_balance(org_id=topup.org_id, kind=Kind.HELD) == 45_000_000
    assert ledger_check() == []


def test_only_post_is_allowed(client):
    assert client.get("/stripe/webhook/").status_code == 405


def test_the_webhook_needs_no_login_but_staff_sessions_change_nothing(client, topup):
    client.force_login(UserFactory(is_staff=True))
    response = se.post_event(
        client, se.event("payment_intent.succeeded", se.payment_intent(topup)), secret=SECRET
    )
    assert response.status_code == 200
