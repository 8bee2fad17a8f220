"""Provider payouts: request → pending row with earned → payout_pending → transfer → Stripe's event.

localstripe has no Connect, so Stripe is faked at the gateway edge: `settlement.stripe_gateway`
is the one module we own that talks to Stripe, and replacing its functions keeps every line of
ours (claims, keys, ledger moves) under test while nothing pretends to be Stripe's HTTP API.
Stripe's answers after the call arrive as hand-signed events through the real webhook endpoint
(tests/settlement/connect_events.py), so signature verification runs too.
"""

from datetime import UTC, datetime, timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from core.errors import InsufficientFunds
from settlement import stripe_gateway
from settlement.errors import PaymentProviderError
from settlement.models import LedgerAccount, LedgerTransaction, Payout, PayoutAccount, StripeEvent
from settlement.selectors import account_balance
from settlement.services import (
    ledger_check,
    ledger_post,
    org_account,
    payout_request,
    payout_retry,
    payout_send,
    payouts_schedule,
    platform_account,
    transfer,
)
from settlement.tasks import payout_send_task
from tests.concurrency import race
from tests.settlement import connect_events as ce

Kind = LedgerAccount.Kind
pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = ce.SECRET
    settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300


class FakeConnect:
    """The gateway's Connect functions, answering as Stripe would; records every call."""

    def __init__(self):
        self.transfers: list[dict] = []
        self.accounts: list[dict] = []
        self.links: list[dict] = []
        self.refusal: str | None = None
        self.is_down = False

    def transfer_create(self, **call) -> stripe_gateway.TransferResult:
        self.transfers.append(call)
        if self.is_down:
            raise PaymentProviderError()
        if self.refusal:
            raise stripe_gateway.RequestRefused(self.refusal, "balance_insufficient")
        # Stripe's idempotency: the same key answers with the same transfer.
        keys = [c["idempotency_key"] for c in self.transfers]
        return stripe_gateway.TransferResult(
            id=f"tr_{keys.index(call['idempotency_key']) + 1}",
            amount_cents=call["amount_cents"],
            destination=call["destination"],
        )

    def connected_account_create(self, **call) -> stripe_gateway.ConnectedAccountResult:
        self.accounts.append(call)
        return stripe_gateway.ConnectedAccountResult(id="acct_new_1")

    def account_link_create(self, **call) -> stripe_gateway.AccountLinkResult:
        self.links.append(call)
        return stripe_gateway.AccountLinkResult(
            url=f"https://connect.stripe.test/setup/{len(self.links)}", expires_at=0
        )


@pytest.fixture
def connect(monkeypatch) -> FakeConnect:
    fake = FakeConnect()
    for name in ("transfer_create", "connected_account_create", "account_link_create"):
        monkeypatch.setattr(stripe_gateway, name, getattr(fake, name))
    return fake


@pytest.fixture
def stripe(client, django_capture_on_commit_callbacks) -> ce.Stripe:
    return ce.Stripe(client, django_capture_on_commit_callbacks)


def earn(org_id: int, amount_micro: int) -> None:
    """Provider proceeds, as delivery settlement books them (from the platform here)."""
    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=org_id, kind=Kind.EARNED),
                amount_micro,
            ),
            reference=f"test-earnings:{org_id}",
        )


@pytest.fixture
def account(provider) -> PayoutAccount:
    return PayoutAccount.objects.create(
        org=provider.org,
        stripe_account_id="acct_test_1",
        onboarding_status=PayoutAccount.Onboarding.ENABLED,
    )


@pytest.fixture
def earned(provider, account) -> int:
    earn(provider.org.id, 100_000_000)
    return 100_000_000


def _balances(org_id: int) -> tuple[int, int, int]:
    """(earned, payout_pending, stripe_clearing)."""
    return (
        account_balance(org_id=org_id, kind=Kind.EARNED),
        account_balance(org_id=org_id, kind=Kind.PAYOUT_PENDING),
        platform_account(kind=Kind.STRIPE_CLEARING).balance_micro,
    )


def _request(provider, capture, amount_micro=40_000_000, key="payout-key-1") -> Payout:
    """Request a payout and run the send task queued on commit, as a worker would."""
    with capture(execute=True):
        payout = payout_request(principal=provider, amount_micro=amount_micro, idempotency_key=key)
    payout.refresh_from_db()
    return payout


def _ledger_kinds(payout: Payout) -> list[str]:
    return list(
        LedgerTransaction.objects.filter(reference=payout.ledger_reference)
        .order_by("id")
        .values_list("idempotency_key", flat=True)
    )


# Request and send


def test_a_request_moves_earned_to_pending_and_the_task_sends_one_keyed_transfer(
    provider, earned, connect, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)

    assert payout.status == Payout.Status.SENT
    assert payout.stripe_transfer_id == "tr_1"
    assert connect.transfers == [
        {
            "amount_cents": 4_000,
            "currency": "USD",
            "destination": "acct_test_1",
            "idempotency_key": f"payout:{payout.id}",
            "metadata": {"payout_id": str(payout.id), "org_id": str(provider.org.id)},
            "transfer_group": f"payout:{payout.id}",
        }
    ]
    assert _balances(provider.org.id) == (60_000_000, 40_000_000, -100_000_000)
    assert _ledger_kinds(payout) == [f"payout:{payout.id}:reserve"]
    assert ledger_check() == []


def test_the_send_task_run_twice_sends_once(
    provider, earned, connect, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)

    assert payout_send_task(payout.id) == "sent"
    assert len(connect.transfers) == 1
    assert ledger_check() == []


def test_a_refused_transfer_fails_the_payout_and_returns_the_money_to_earned(
    provider, earned, connect, django_capture_on_commit_callbacks
):
    connect.refusal = "Insufficient funds in the platform balance."

    payout = _request(provider, django_capture_on_commit_callbacks)

    assert payout.status == Payout.Status.FAILED
    assert payout.failure_reason == "Insufficient funds in the platform balance."
    assert payout.failed_at is not None
    assert _balances(provider.org.id) == (100_000_000, 0, -100_000_000)
    assert _ledger_kinds(payout) == [f"payout:{payout.id}:reserve", f"payout:{payout.id}:failed"]
    assert ledger_check() == []


def test_an_outage_keeps_the_payout_pending_and_the_retry_reuses_the_key(
    provider, earned, connect, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        payout = payout_request(principal=provider, amount_micro=40_000_000)
    connect.is_down = True

    with pytest.raises(PaymentProviderError):
        payout_send_task(payout.id)  # called directly, a retry re-raises the outage

    payout.refresh_from_db()
    assert (payout.status, payout.claimed_until, payout.send_attempts) == ("pending", None, 1)
    assert _balances(provider.org.id)[:2] == (60_000_000, 40_000_000)
    assert ledger_check() == []

    connect.is_down = False
    payout_send(payout_id=payout.id)

    payout.refresh_from_db()
    assert payout.status == Payout.Status.SENT
    assert {c["idempotency_key"] for c in connect.transfers} == {f"payout:{payout.id}"}
    assert ledger_check() == []


def test_a_payout_claimed_by_a_live_sender_is_left_alone(
    provider, earned, connect, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        payout = payout_request(principal=provider, amount_micro=40_000_000)
    Payout.objects.filter(pk=payout.id).update(claimed_until=timezone.now() + timedelta(minutes=1))

    payout_send(payout_id=payout.id)

    assert connect.transfers == []
    assert Payout.objects.get(pk=payout.id).status == Payout.Status.PENDING


# Stripe's transfer events


def test_transfer_created_confirms_the_payout_into_stripe_clearing(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)

    stripe.send("transfer.created", ce.transfer(payout, transfer_id="tr_1"))

    payout.refresh_from_db()
    assert payout.status == Payout.Status.PAID
    assert payout.paid_at is not None
    assert _balances(provider.org.id) == (60_000_000, 0, -60_000_000)
    assert _ledger_kinds(payout) == [f"payout:{payout.id}:reserve", f"payout:{payout.id}:paid"]
    assert StripeEvent.objects.get().status == StripeEvent.Status.PROCESSED
    assert ledger_check() == []


def test_duplicate_transfer_events_confirm_once(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)
    created = ce.transfer(payout, transfer_id="tr_1")

    stripe.send("transfer.created", created, event_id="evt_same")
    stripe.send("transfer.created", created, event_id="evt_same")  # redelivered
    stripe.send("transfer.updated", created)  # the same state under another event

    assert StripeEvent.objects.count() == 2
    assert LedgerTransaction.objects.filter(idempotency_key=f"payout:{payout.id}:paid").count() == 1
    assert _balances(provider.org.id) == (60_000_000, 0, -60_000_000)
    assert ledger_check() == []


def test_the_event_can_beat_the_task_and_then_the_task_sends_nothing(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):
        payout = payout_request(principal=provider, amount_micro=40_000_000)

    # Found by its metadata: the task that will record the transfer id has not run yet.
    stripe.send("transfer.created", ce.transfer(payout, transfer_id="tr_early"))
    payout_send(payout_id=payout.id)

    payout.refresh_from_db()
    assert (payout.status, payout.stripe_transfer_id) == ("paid", "tr_early")
    assert connect.transfers == []
    assert _balances(provider.org.id) == (60_000_000, 0, -60_000_000)
    assert ledger_check() == []


def test_a_partial_then_a_full_reversal_return_their_differences_to_earned(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)
    stripe.send("transfer.created", ce.transfer(payout, transfer_id="tr_1"))

    stripe.send("transfer.reversed", ce.transfer(payout, transfer_id="tr_1", reversed_cents=1_000))
    payout.refresh_from_db()
    assert (payout.status, payout.reversed_micro) == ("paid", 10_000_000)
    assert _balances(provider.org.id) == (70_000_000, 0, -70_000_000)

    full = ce.transfer(payout, transfer_id="tr_1", reversed_cents=4_000)
    stripe.send("transfer.reversed", full)
    stripe.send("transfer.reversed", full)  # the same state again

    payout.refresh_from_db()
    assert (payout.status, payout.reversed_micro) == ("reversed", 40_000_000)
    assert _balances(provider.org.id) == (100_000_000, 0, -100_000_000)
    assert ledger_check() == []


def test_a_reversal_before_the_creation_event_moves_each_step_once(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)

    stripe.send("transfer.reversed", ce.transfer(payout, transfer_id="tr_1", reversed_cents=4_000))
    stripe.send("transfer.created", ce.transfer(payout, transfer_id="tr_1"))  # late, older

    payout.refresh_from_db()
    assert payout.status == Payout.Status.REVERSED
    assert _ledger_kinds(payout) == [
        f"payout:{payout.id}:reserve",
        f"payout:{payout.id}:paid",
        f"payout:{payout.id}:reversed:40000000",
    ]
    assert _balances(provider.org.id) == (100_000_000, 0, -100_000_000)
    assert ledger_check() == []


def test_a_transfer_for_a_refused_payout_waits_for_staff_and_moves_nothing(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    connect.refusal = "No."
    payout = _request(provider, django_capture_on_commit_callbacks)

    delivery = stripe.send("transfer.created", ce.transfer(payout, transfer_id="tr_ghost"))

    event = StripeEvent.objects.get()
    assert event.status == StripeEvent.Status.FAILED
    assert "was refused and returned" in event.last_error
    assert len(delivery.retried) == 1
    assert _balances(provider.org.id) == (100_000_000, 0, -100_000_000)
    assert ledger_check() == []


@pytest.mark.parametrize(
    "change",
    [{"amount_cents": 9_999}, {"destination": "acct_someone_else"}, {"transfer_id": "tr_other"}],
)
def test_a_transfer_that_does_not_match_its_payout_moves_nothing(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks, change
):
    payout = _request(provider, django_capture_on_commit_callbacks)  # recorded as tr_1

    stripe.send("transfer.created", ce.transfer(payout, **{"transfer_id": "tr_1", **change}))

    assert StripeEvent.objects.get().status == StripeEvent.Status.FAILED
    assert Payout.objects.get(pk=payout.id).status == Payout.Status.SENT
    assert _balances(provider.org.id) == (60_000_000, 40_000_000, -100_000_000)
    assert ledger_check() == []


def test_a_connected_accounts_bank_payout_events_are_stored_and_ignored(
    provider, earned, connect, stripe, django_capture_on_commit_callbacks
):
    payout = _request(provider, django_capture_on_commit_callbacks)
    stripe.send("transfer.created", ce.transfer(payout, transfer_id="tr_1"))

    bank_payout = {"id": "po_1", "object": "payout", "amount": 4_000, "status": "failed"}
    stripe.send_event({**ce.se.event("payout.failed", bank_payout), "account": "acct_test_1"})

    assert StripeEvent.objects.get(type="payout.failed").status == StripeEvent.Status.IGNORED
    assert Payout.objects.get(pk=payout.id).status == Payout.Status.PAID
    assert _balances(provider.org.id) == (60_000_000, 0, -60_000_000)
    assert ledger_check() == []


# The API


def _api(api_for, provider):
    return api_for(provider, scopes=["read", "payouts"])


def test_post_payouts_answers_201_and_a_retry_returns_the_first_payout(
    provider, earned, connect, api_for, django_capture_on_commit_callbacks
):
    client = _api(api_for, provider)
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post(
            "/api/v1/payouts", {"amount": "25.50"}, format="json", HTTP_IDEMPOTENCY_KEY="pay-25-50"
        )
    second = client.post(
        "/api/v1/payouts", {"amount": "25.50"}, format="json", HTTP_IDEMPOTENCY_KEY="pay-25-50"
    )
    reused = client.post(
        "/api/v1/payouts", {"amount": "1.00"}, format="json", HTTP_IDEMPOTENCY_KEY="pay-25-50"
    )

    assert first.status_code == 201, first.json()
    assert first.json()["amount"] == "25.500000"
    assert second.status_code == 201
    assert second.json()["id"] == first.json()["id"]
    assert reused.status_code == 409
    assert reused.json()["error"]["code"] == "idempotency_key_reused"
    assert Payout.objects.count() == 1
    assert len(connect.transfers) == 1
    listed = client.get("/api/v1/payouts").json()["results"]
    assert [(p["id"], p["status"]) for p in listed] == [(first.json()["id"], "sent")]
    assert _balances(provider.org.id)[:2] == (74_500_000, 25_500_000)
    assert ledger_check() == []


def test_post_payouts_without_an_amount_pays_out_all_whole_cents_earned(
    provider, account, connect, api_for, django_capture_on_commit_callbacks
):
    earn(provider.org.id, 12_345_678)
    with django_capture_on_commit_callbacks(execute=True):
        response = _api(api_for, provider).post("/api/v1/payouts", {}, format="json")

    assert response.status_code == 201, response.json()
    assert response.json()["amount"] == "12.340000"
    assert _balances(provider.org.id)[:2] == (5_678, 12_340_000)  # the sub-cent rest stays
    assert ledger_check() == []


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"amount": "100.01"}, 402, "insufficient_funds"),
        ({"amount": "0.001"}, 400, "invalid"),
        ({"amount": "-5.00"}, 400, "invalid"),
        ({"amount": "ten"}, 400, "invalid"),
    ],
)
def test_post_payouts_refuses_what_earned_does_not_cover_or_bad_amounts(
    provider, earned, connect, api_for, body, status, code
):
    response = _api(api_for, provider).post("/api/v1/payouts", body, format="json")

    assert response.status_code == status, response.json()
    assert response.json()["error"]["code"] == code
    assert not Payout.objects.exists()
    assert _balances(provider.org.id)[:2] == (100_000_000, 0)
    assert ledger_check() == []


def test_post_payouts_needs_an_enabled_stripe_account(provider, connect, api_for):
    client = _api(api_for, provider)
    earn(provider.org.id, 10_000_000)

    missing = client.post("/api/v1/payouts", {"amount": "5.00"}, format="json")
    PayoutAccount.objects.create(
        org=provider.org, stripe_account_id="acct_x", onboarding_status="pending"
    )
    not_ready = client.post("/api/v1/payouts", {"amount": "5.00"}, format="json")

    assert (missing.status_code, missing.json()["error"]["code"]) == (
        409,
        "payout_account_missing",
    )
    assert (not_ready.status_code, not_ready.json()["error"]["code"]) == (
        409,
        "payout_account_not_ready",
    )
    assert not Payout.objects.exists()
    assert ledger_check() == []


def test_a_buyer_org_gets_no_payouts_and_the_scope_is_required(buyer, provider, api_for):
    as_buyer = api_for(buyer).post("/api/v1/payouts", {"amount": "5.00"}, format="json")
    read_only = api_for(provider, scopes=["read"]).post(
        "/api/v1/payouts", {"amount": "5.00"}, format="json"
    )

    assert (as_buyer.status_code, as_buyer.json()["error"]["code"]) == (403, "not_a_provider")
    assert read_only.status_code == 403
    assert api_for(buyer).get("/api/v1/payouts").json()["results"] == []


def test_the_payout_account_endpoint_connects_once_and_returns_a_fresh_link(
    provider, connect, api_for
):
    client = _api(api_for, provider)

    first = client.post(
        "/api/v1/payout-account",
        {"payout_minimum": "50.00", "schedule": "weekly"},
        format="json",
    )
    second = client.post("/api/v1/payout-account", {}, format="json")

    assert first.status_code == 200, first.json()
    assert first.json() == {
        "stripe_account_id": "acct_new_1",
        "onboarding_status": "pending",
        "payout_minimum": "50.000000",
        "schedule": "weekly",
        "onboarding_url": "https://connect.stripe.test/setup/1",
    }
    assert second.json()["onboarding_url"] == "https://connect.stripe.test/setup/2"
    assert second.json()["schedule"] == "weekly"  # left out, so unchanged
    assert len(connect.accounts) == 1
    assert connect.accounts[0]["idempotency_key"].startswith("payout-account:")
    bad = client.post("/api/v1/payout-account", {"schedule": "hourly"}, format="json")
    assert (bad.status_code, bad.json()["error"]["code"]) == (400, "invalid")


def test_account_updated_enables_payouts_and_an_older_snapshot_changes_nothing(
    provider, connect, stripe
):
    payout_account = PayoutAccount.objects.create(
        org=provider.org, stripe_account_id="acct_new_1", onboarding_status="pending"
    )
    newer = ce.se.event("account.updated", ce.account("acct_new_1"))
    older = ce.se.event("account.updated", ce.account("acct_new_1", transfers="inactive"))
    older["created"] = newer["created"] - 60

    stripe.send_event(newer)
    stripe.send_event(older)

    payout_account.refresh_from_db()
    assert payout_account.onboarding_status == PayoutAccount.Onboarding.ENABLED


# The schedule and the admin's retry


def _at(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(hour=6, tzinfo=UTC)


def test_the_schedule_pays_due_accounts_above_their_minimum_once_per_period(
    provider, account, connect, django_capture_on_commit_callbacks
):
    account.schedule = PayoutAccount.Schedule.DAILY
    account.payout_minimum_micro = 50_000_000
    account.save()
    earn(provider.org.id, 30_000_000)

    with django_capture_on_commit_callbacks(execute=True):
        below = payouts_schedule(now=_at("2026-03-02"))
    earn(provider.org.id, 30_000_000)
    with django_capture_on_commit_callbacks(execute=True):
        due = payouts_schedule(now=_at("2026-03-02"))
    earn(provider.org.id, 70_000_000)
    with django_capture_on_commit_callbacks(execute=True):
        again = payouts_schedule(now=_at("2026-03-02"))

    assert below.created == []
    assert len(due.created) == 1
    assert again.created == []  # once a day, however much more is earned
    payout = Payout.objects.get()
    assert (payout.origin, payout.amount_micro, payout.idempotency_key) == (
        "scheduled",
        60_000_000,
        "schedule:2026-03-02",
    )
    assert payout.status == Payout.Status.SENT
    assert _balances(provider.org.id)[:2] == (70_000_000, 60_000_000)
    assert ledger_check() == []


def test_a_manual_account_is_never_paid_by_the_schedule(provider, earned, connect):
    assert payouts_schedule(now=_at("2026-03-02")).created == []
    assert not Payout.objects.exists()


def test_the_schedule_sends_again_a_pending_payout_that_lost_its_task(
    provider, earned, connect, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):  # the message is lost
        payout = payout_request(principal=provider, amount_micro=40_000_000)
    Payout.objects.filter(pk=payout.id).update(created_at=timezone.now() - timedelta(minutes=10))

    run = payouts_schedule()

    assert run.resent_payouts == [payout.id]
    assert Payout.objects.get(pk=payout.id).status == Payout.Status.SENT
    assert ledger_check() == []


def test_retrying_a_failed_payout_makes_one_new_payout(
    provider, earned, connect, staff, django_capture_on_commit_callbacks
):
    connect.refusal = "No."
    failed = _request(provider, django_capture_on_commit_callbacks)
    connect.refusal = None

    with django_capture_on_commit_callbacks(execute=True):
        retried = payout_retry(payout_id=failed.id, actor=staff)
    again = payout_retry(payout_id=failed.id, actor=staff)

    assert again.id == retried.id
    retried.refresh_from_db()
    assert (retried.origin, retried.status, retried.amount_micro) == ("retry", "sent", 40_000_000)
    assert _balances(provider.org.id)[:2] == (60_000_000, 40_000_000)
    assert ledger_check() == []


def test_the_admin_retry_action_sends_a_failed_payout_again(
    provider, earned, connect, staff, client, django_capture_on_commit_callbacks
):
    connect.refusal = "No."
    failed = _request(provider, django_capture_on_commit_callbacks)
    connect.refusal = None
    client.force_login(staff)

    with django_capture_on_commit_callbacks(execute=True):
        response = client.post(
            "/admin/settlement/payout/",
            {"action": "send_again", "_selected_action": [failed.id]},
        )

    assert response.status_code == 302
    assert Payout.objects.filter(origin="retry", status="sent").count() == 1
    assert ledger_check() == []


# Races (PostgreSQL)


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_payout_requests_never_move_more_than_earned(provider, account, connect):
    earn(provider.org.id, 100_000_000)

    results = race(
        6,
        lambda i: payout_request(
            principal=provider, amount_micro=30_000_000, idempotency_key=f"race-{i}"
        ),
    )

    made = [r for r in results if isinstance(r, Payout)]
    refused = [r for r in results if isinstance(r, InsufficientFunds)]
    assert (len(made), len(refused)) == (3, 3), results
    earned_micro, pending_micro, _ = _balances(provider.org.id)
    assert (earned_micro, pending_micro) == (10_000_000, 90_000_000)
    assert Payout.objects.count() == 3
    assert ledger_check() == []


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_concurrent_pay_out_everything_requests_pay_it_once(provider, account, connect):
    earn(provider.org.id, 100_000_000)

    results = race(4, lambda i: payout_request(principal=provider, idempotency_key=f"all-{i}"))

    made = [r for r in results if isinstance(r, Payout)]
    assert len(made) == 1, results
    assert all(isinstance(r, InsufficientFunds) for r in results if r not in made), results
    assert _balances(provider.org.id)[:2] == (0, 100_000_000)
    assert ledger_check() == []
