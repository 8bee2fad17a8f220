"""The Stripe webhook, end to end inside the app: signed POST → stored event → task → ledger.

Events are signed by hand exactly as Stripe signs them (tests/settlement/stripe_events.py), so
the real verification runs. The processing task is queued on commit; `deliver` captures what the
request queued and runs it the way a worker would, noting a task that asked to be retried.
"""

import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pytest
from celery.exceptions import Retry
from django.http import HttpResponse
from django.utils import timezone

from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction, StripeEvent, TopUp
from settlement.selectors import account_balance
from settlement.services import hold_place, ledger_check, platform_account
from settlement.services import stripe_events as stripe_events_service
from settlement.tasks import stripe_events_redrive_task
from tests.concurrency import race
from tests.settlement import stripe_events as se

Kind = LedgerAccount.Kind
SECRET = "whsec_unit_test"
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = SECRET
    settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300


@dataclass
class Delivery:
    response: HttpResponse
    queued: int = 0
    retried: list[Retry] = field(default_factory=list)

    @property
    def body(self) -> dict:
        return self.response.json()


class Stripe:
    """Posts to /stripe/webhook/ as Stripe does, then runs the queued tasks as a worker would."""

    def __init__(self, client, capture):
        self._client = client
        self._capture = capture

    def send(self, payload: dict, *, secret: str = SECRET, timestamp: int | None = None):
        body = se.body_of(payload)
        return self.post(body, se.signature_header(body, secret, timestamp=timestamp))

    def post(self, body: bytes, signature: str | None) -> Delivery:
        headers = {} if signature is None else {"HTTP_STRIPE_SIGNATURE": signature}
        with self._capture() as callbacks:
            response = self._client.post(
                "/stripe/webhook/", data=body, content_type="application/json", **headers
            )
        delivery = Delivery(response=response, queued=len(callbacks))
        for callback in callbacks:
            try:
                callback()
            except Retry as retry:  # a worker would run it again after the countdown
                delivery.retried.append(retry)
        return delivery


@pytest.fixture
def stripe(client, django_capture_on_commit_callbacks) -> Stripe:
    return Stripe(client, django_capture_on_commit_callbacks)


def _topup(org, **fields) -> TopUp:
    defaults = {
        "amount_micro": 50_000_000,
        "method": TopUp.Method.PAYMENT_INTENT,
        "status": TopUp.Status.PENDING,
        "idempotency_key": f"key-{TopUp.objects.count()}",
        "request_fingerprint": "f",
        "stripe_payment_intent_id": f"pi_test_{TopUp.objects.count()}",
    }
    return TopUp.objects.create(org=org, **{**defaults, **fields})


@pytest.fixture
def topup(buyer) -> TopUp:
    return _topup(buyer.org)


def _available(topup: TopUp) -> int:
    return account_balance(org_id=topup.org_id, kind=Kind.AVAILABLE)


def _clearing() -> int:
    return platform_account(kind=Kind.STRIPE_CLEARING).balance_micro


def _adjustments() -> int:
    return platform_account(kind=Kind.ADJUSTMENTS).balance_micro


def _succeeded(topup: TopUp, **kwargs) -> dict:
    return se.event("payment_intent.succeeded", se.payment_intent(topup, **kwargs))


def _minutes_ago(minutes: int) -> datetime:
    return timezone.now() - timedelta(minutes=minutes)


def _status(topup: TopUp) -> str:
    topup.refresh_from_db()
    return topup.status


# Verification


def test_a_verified_success_credits_the_topup_with_one_balanced_transaction(stripe, topup):
    delivery = stripe.send(_succeeded(topup))

    assert delivery.response.status_code == 200
    assert delivery.body == {"received": True, "duplicate": False, "status": "received"}
    assert delivery.queued == 1
    assert _status(topup) == TopUp.Status.SUCCEEDED
    assert topup.succeeded_at is not None
    assert _available(topup) == 50_000_000
    assert _clearing() == -50_000_000
    txn = LedgerTransaction.objects.get()
    assert (txn.kind, txn.reference) == (LedgerTransaction.Kind.TOPUP, f"topup:{topup.id}")
    assert sorted(txn.entries.values_list("account__kind", "amount_micro")) == [
        ("available", 50_000_000),
        ("stripe_clearing", -50_000_000),
    ]
    event = StripeEvent.objects.get()
    assert (event.status, event.attempts, event.last_error) == ("processed", 1, "")
    assert ledger_check() == []


def test_a_bad_signature_is_refused_and_nothing_is_stored(stripe, topup):
    delivery = stripe.send(_succeeded(topup), secret="whsec_someone_else")

    assert delivery.response.status_code == 400
    assert delivery.body["error"]["code"] == "invalid_signature"
    assert delivery.queued == 0
    assert not StripeEvent.objects.exists()
    assert _available(topup) == 0
    assert ledger_check() == []


def test_a_body_changed_after_signing_is_refused(stripe, topup):
    body = se.body_of(_succeeded(topup))
    signature = se.signature_header(body, SECRET)
    tampered = body.replace(b'"amount": 5000', b'"amount": 9000')
    assert tampered != body

    delivery = stripe.post(tampered, signature)

    assert delivery.response.status_code == 400
    assert delivery.body["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


def test_a_missing_signature_header_is_refused(stripe, topup):
    delivery = stripe.post(se.body_of(_succeeded(topup)), None)

    assert delivery.response.status_code == 400
    assert delivery.body["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()


def test_an_event_signed_longer_ago_than_the_tolerance_is_refused_as_a_replay(stripe, topup):
    signed_at = int(time.time()) - 300 - 30

    delivery = stripe.send(_succeeded(topup), timestamp=signed_at)

    assert delivery.response.status_code == 400
    assert delivery.body["error"]["code"] == "invalid_signature"
    assert not StripeEvent.objects.exists()
    assert _available(topup) == 0


def test_an_event_signed_within_the_tolerance_is_accepted(stripe, topup):
    delivery = stripe.send(_succeeded(topup), timestamp=int(time.time()) - 240)

    assert delivery.response.status_code == 200
    assert _available(topup) == 50_000_000


def test_a_signed_body_that_is_not_json_is_refused(stripe):
    body = b"this is not json"

    delivery = stripe.post(body, se.signature_header(body, SECRET))

    assert delivery.response.status_code == 400
    assert delivery.body["error"]["code"] == "invalid_event"
    assert not StripeEvent.objects.exists()


@pytest.mark.parametrize("payload", [[], {"type": "x", "data": {"object": {}}}, {"id": "evt_1"}])
def test_signed_json_that_is_not_an_event_is_refused(stripe, payload):
    body = json.dumps(payload).encode()

    delivery = stripe.post(body, se.signature_header(body, SECRET))

    assert delivery.response.status_code == 400
    assert delivery.body["error"]["code"] == "invalid_event"
    assert not StripeEvent.objects.exists()


def test_only_post_is_allowed(client):
    assert client.get("/stripe/webhook/").status_code == 405


# Duplicates and order


def test_a_duplicate_event_id_is_stored_once_and_credits_once(stripe, topup):
    payload = _succeeded(topup)

    first = stripe.send(payload)
    second = stripe.send(payload)

    assert (first.response.status_code, second.response.status_code) == (200, 200)
    assert (first.body["duplicate"], second.body["duplicate"]) == (False, True)
    assert second.queued == 0  # already processed: nothing to do again
    assert StripeEvent.objects.count() == 1
    assert LedgerTransaction.objects.count() == 1
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_the_same_payment_succeeding_under_two_event_ids_credits_once(stripe, topup):
    stripe.send(_succeeded(topup))
    stripe.send(_succeeded(topup))

    assert StripeEvent.objects.filter(status=StripeEvent.Status.PROCESSED).count() == 2
    assert LedgerTransaction.objects.count() == 1
    assert _available(topup) == 50_000_000
    assert _clearing() == -50_000_000
    assert ledger_check() == []


def test_a_failure_arriving_after_the_success_changes_nothing(stripe, topup):
    stripe.send(_succeeded(topup))
    declined = se.payment_intent(topup, status="requires_payment_method", error="Card declined.")

    stripe.send(se.event("payment_intent.payment_failed", declined))

    assert _status(topup) == TopUp.Status.SUCCEEDED
    assert topup.failure_message == ""
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_a_success_after_a_failure_credits(stripe, topup):
    declined = se.payment_intent(topup, status="requires_payment_method", error="Card declined.")
    stripe.send(se.event("payment_intent.payment_failed", declined))
    assert _status(topup) == TopUp.Status.FAILED
    assert topup.failure_message == "Card declined."

    stripe.send(_succeeded(topup))

    assert _status(topup) == TopUp.Status.SUCCEEDED
    assert topup.failure_message == ""
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_a_canceled_payment_intent_cancels_a_pending_topup(stripe, topup):
    canceled = se.payment_intent(topup, status="canceled")

    stripe.send(se.event("payment_intent.canceled", canceled))

    assert _status(topup) == TopUp.Status.CANCELED
    assert _available(topup) == 0


def test_a_success_that_beats_our_record_of_the_intent_credits_and_records_it(stripe, buyer):
    # Stripe answered topup_create, but the webhook arrived before we recorded the intent id.
    topup = _topup(buyer.org, status=TopUp.Status.CREATED, stripe_payment_intent_id=None)

    stripe.send(_succeeded(topup, intent_id="pi_not_recorded_yet"))

    assert _status(topup) == TopUp.Status.SUCCEEDED
    assert topup.stripe_payment_intent_id == "pi_not_recorded_yet"  # so a refund can find it
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_a_second_payment_intent_for_one_topup_is_flagged_not_credited(stripe, topup):
    delivery = stripe.send(_succeeded(topup, intent_id="pi_someone_else"))

    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED
    assert "pi_someone_else" in event.last_error
    assert len(delivery.retried) == 1
    assert _status(topup) == TopUp.Status.PENDING
    assert _available(topup) == 0
    assert ledger_check() == []


def test_a_success_for_a_payment_that_is_not_ours_credits_nobody(stripe, topup):
    foreign = {"id": "pi_foreign", "amount": 5000, "currency": "usd", "metadata": {}}

    stripe.send(se.event("payment_intent.succeeded", foreign))

    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    assert not LedgerTransaction.objects.exists()
    assert ledger_check() == []


@pytest.mark.parametrize(("amount_cents", "currency"), [(100, "usd"), (5001, "usd"), (5000, "eur")])
def test_an_amount_or_currency_mismatch_fails_the_event_without_credit(
    stripe, topup, amount_cents, currency
):
    delivery = stripe.send(_succeeded(topup, amount_cents=amount_cents, currency=currency))

    assert delivery.response.status_code == 200  # stored; Stripe must not keep resending it
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED
    assert "expects 50000000" in event.last_error
    assert event.attempts == 1
    assert len(delivery.retried) == 1
    assert _status(topup) == TopUp.Status.PENDING
    assert _available(topup) == 0
    assert ledger_check() == []


# Checkout


@pytest.fixture
def checkout_topup(buyer) -> TopUp:
    return _topup(
        buyer.org,
        amount_micro=20_000_000,
        method=TopUp.Method.CHECKOUT,
        stripe_payment_intent_id=None,
        stripe_checkout_session_id="cs_test_1",
    )


def test_a_paid_checkout_session_credits_and_records_its_payment_intent(stripe, checkout_topup):
    session = se.checkout_session(checkout_topup, payment_status="paid")

    stripe.send(se.event("checkout.session.completed", session))

    assert _status(checkout_topup) == TopUp.Status.SUCCEEDED
    assert checkout_topup.stripe_payment_intent_id == "pi_cs_1"
    assert _available(checkout_topup) == 20_000_000
    assert ledger_check() == []


def test_an_unpaid_checkout_is_credited_once_by_the_async_payment(stripe, checkout_topup):
    unpaid = se.checkout_session(checkout_topup, payment_status="unpaid")
    paid = se.checkout_session(checkout_topup, payment_status="paid")

    stripe.send(se.event("checkout.session.completed", unpaid))
    assert _status(checkout_topup) == TopUp.Status.PENDING
    assert _available(checkout_topup) == 0

    stripe.send(se.event("checkout.session.async_payment_succeeded", paid))
    stripe.send(se.event("checkout.session.async_payment_succeeded", paid))  # another event id
    stripe.send(_succeeded(checkout_topup, intent_id="pi_cs_1"))  # the payment's own event

    assert _status(checkout_topup) == TopUp.Status.SUCCEEDED
    assert LedgerTransaction.objects.count() == 1
    assert _available(checkout_topup) == 20_000_000
    assert ledger_check() == []


def test_a_checkout_session_that_beats_our_record_of_it_is_found_by_reference(stripe, buyer):
    topup = _topup(
        buyer.org,
        method=TopUp.Method.CHECKOUT,
        status=TopUp.Status.CREATED,
        stripe_payment_intent_id=None,
    )
    session = se.checkout_session(topup, payment_status="paid", session_id="cs_late")

    stripe.send(se.event("checkout.session.completed", session))

    assert _status(topup) == TopUp.Status.SUCCEEDED
    assert topup.stripe_checkout_session_id == "cs_late"
    assert _available(topup) == 50_000_000


def test_a_failed_async_checkout_payment_fails_the_topup(stripe, checkout_topup):
    unpaid = se.checkout_session(checkout_topup, payment_status="unpaid")

    stripe.send(se.event("checkout.session.async_payment_failed", unpaid))

    assert _status(checkout_topup) == TopUp.Status.FAILED
    assert _available(checkout_topup) == 0


def test_an_expired_checkout_cancels_the_topup(stripe, checkout_topup):
    unpaid = se.checkout_session(checkout_topup, payment_status="unpaid")

    stripe.send(se.event("checkout.session.expired", unpaid))

    assert _status(checkout_topup) == TopUp.Status.CANCELED


# Refunds


def _refunded(topup: TopUp, cents: int) -> dict:
    return se.event("charge.refunded", se.charge(topup, refunded_cents=cents))


def test_a_partial_then_a_full_refund_debit_their_differences(stripe, topup):
    stripe.send(_succeeded(topup))

    stripe.send(_refunded(topup, 1_000))
    assert _available(topup) == 40_000_000
    assert _clearing() == -40_000_000

    stripe.send(_refunded(topup, 5_000))
    topup.refresh_from_db()
    assert topup.refunded_micro == 50_000_000
    assert _available(topup) == 0
    assert _clearing() == 0
    amounts = LedgerEntry.objects.filter(
        transaction__kind=LedgerTransaction.Kind.TOPUP_REFUND, account__kind=Kind.AVAILABLE
    ).values_list("amount_micro", flat=True)
    assert sorted(amounts) == [-40_000_000, -10_000_000]
    assert ledger_check() == []


def test_duplicate_refund_events_debit_once(stripe, topup):
    stripe.send(_succeeded(topup))
    refund = _refunded(topup, 1_000)

    stripe.send(refund)
    stripe.send(refund)  # the same event again
    stripe.send(_refunded(topup, 1_000))  # the same refund state under another event id

    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.TOPUP_REFUND).count() == 1
    assert _available(topup) == 40_000_000
    assert ledger_check() == []


def test_a_refund_of_money_already_spent_books_the_shortfall_to_adjustments(stripe, topup):
    stripe.send(_succeeded(topup))
    hold_place(org_id=topup.org_id, amount_micro=45_000_000, reference="order:1")

    stripe.send(_refunded(topup, 5_000))

    assert _available(topup) == 0  # never negative
    assert account_balance(org_id=topup.org_id, kind=Kind.HELD) == 45_000_000
    assert _adjustments() == -45_000_000  # the platform's loss, for staff to follow up
    assert _clearing() == 0  # Stripe took the whole refund back
    txn = LedgerTransaction.objects.get(kind=LedgerTransaction.Kind.TOPUP_REFUND)
    assert "45000000 micro-USD already spent" in txn.reason
    assert ledger_check() == []


def test_a_refund_arriving_before_the_payment_waits_for_it(stripe, topup):
    early = stripe.send(_refunded(topup, 5_000))
    assert StripeEvent.objects.get().status == StripeEvent.Status.FAILED
    assert len(early.retried) == 1
    assert not LedgerTransaction.objects.exists()

    stripe.send(_succeeded(topup))
    assert _available(topup) == 50_000_000
    StripeEvent.objects.update(received_at=_minutes_ago(5))
    stripe_events_redrive_task()

    assert set(StripeEvent.objects.values_list("status", flat=True)) == {"processed"}
    assert _available(topup) == 0  # the refund was applied after all, exactly once
    assert _clearing() == 0
    assert ledger_check() == []


def test_a_refund_for_a_charge_that_is_not_ours_changes_nothing(stripe, topup):
    stripe.send(_succeeded(topup))

    stripe.send(
        se.event("charge.refunded", se.charge(topup, refunded_cents=5_000, intent_id="pi_x"))
    )

    assert _available(topup) == 50_000_000
    assert ledger_check() == []


# Unknown types, failures and the redrive


def test_an_unknown_event_type_is_stored_and_ignored(stripe):
    delivery = stripe.send(se.event("customer.created", {"id": "cus_1", "object": "customer"}))

    assert delivery.response.status_code == 200
    event = StripeEvent.objects.get()
    assert (event.type, event.status) == ("customer.created", StripeEvent.Status.IGNORED)
    assert event.payload["data"]["object"]["id"] == "cus_1"
    assert not LedgerTransaction.objects.exists()


def _break_success_handler(monkeypatch) -> None:
    def broken(event):
        raise RuntimeError("database hiccup")

    monkeypatch.setitem(stripe_events_service.HANDLERS, "payment_intent.succeeded", broken)


def test_a_handler_exception_marks_the_event_failed_with_the_error(stripe, topup, monkeypatch):
    _break_success_handler(monkeypatch)

    delivery = stripe.send(_succeeded(topup))

    assert delivery.response.status_code == 200
    assert len(delivery.retried) == 1
    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED
    assert event.attempts == 1
    assert "database hiccup" in event.last_error
    assert _status(topup) == TopUp.Status.PENDING
    assert not LedgerTransaction.objects.exists()  # the failed attempt left nothing behind
    assert ledger_check() == []


def test_the_redrive_processes_a_failed_event_later(stripe, topup, monkeypatch):
    _break_success_handler(monkeypatch)
    stripe.send(_succeeded(topup))
    monkeypatch.undo()
    StripeEvent.objects.update(received_at=_minutes_ago(5))

    assert stripe_events_redrive_task() == 1

    event = StripeEvent.objects.get()
    assert (event.status, event.attempts, event.last_error) == ("processed", 2, "")
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


def test_the_redrive_skips_fresh_settled_and_exhausted_events(stripe, topup, buyer, monkeypatch):
    _break_success_handler(monkeypatch)
    stripe.send(_succeeded(topup))
    monkeypatch.undo()
    assert stripe_events_redrive_task() == 0  # failed a moment ago: its own retries come first

    stripe.send(se.event("customer.created", {"id": "cus_1"}))
    stripe.send(_succeeded(_topup(buyer.org)))
    StripeEvent.objects.update(received_at=_minutes_ago(5))
    StripeEvent.objects.filter(status=StripeEvent.Status.FAILED).update(
        attempts=stripe_events_service.REDRIVE_MAX_ATTEMPTS
    )

    assert stripe_events_redrive_task() == 0
    assert StripeEvent.objects.get(status=StripeEvent.Status.FAILED).attempts == 20
    assert _status(topup) == TopUp.Status.PENDING  # still waiting for staff


def test_stripe_redelivering_a_failed_event_processes_it_again(stripe, topup, monkeypatch):
    payload = _succeeded(topup)
    _break_success_handler(monkeypatch)
    stripe.send(payload)
    monkeypatch.undo()

    again = stripe.send(payload)

    assert again.body["duplicate"] is True
    assert again.queued == 1
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


# Real concurrency (PostgreSQL)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_one_event_delivered_eight_times_at_once_is_stored_and_credited_once(topup):
    # Each delivery commits and then runs the processing task (eager) in its own thread.
    payload = _succeeded(topup)

    results = race(8, lambda i: stripe_events_service.stripe_event_record(event=payload))

    assert all(isinstance(r, tuple) for r in results), results
    assert sum(1 for _, is_new in results if is_new) == 1
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    assert LedgerTransaction.objects.count() == 1
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_eight_success_events_for_one_payment_at_once_credit_once(topup):
    payloads = [_succeeded(topup) for _ in range(8)]

    results = race(8, lambda i: stripe_events_service.stripe_event_record(event=payloads[i]))

    assert all(isinstance(r, tuple) for r in results), results
    assert StripeEvent.objects.filter(status=StripeEvent.Status.PROCESSED).count() == 8
    assert LedgerTransaction.objects.count() == 1
    assert _available(topup) == 50_000_000
    assert ledger_check() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_refund_events_racing_each_other_debit_each_step_once(topup):
    stripe_events_service.stripe_event_record(event=_succeeded(topup))
    payloads = [_refunded(topup, cents) for cents in (1_000, 1_000, 3_000, 3_000, 5_000, 5_000)]

    results = race(6, lambda i: stripe_events_service.stripe_event_record(event=payloads[i]))

    assert all(isinstance(r, tuple) for r in results), results
    topup.refresh_from_db()
    assert topup.refunded_micro == 50_000_000
    assert _available(topup) == 0
    assert _clearing() == 0
    assert ledger_check() == []
