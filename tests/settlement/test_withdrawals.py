"""Buyer withdrawals: unused available balance refunded to the cards that paid it.

Unit tests fake Stripe at the gateway edge (`stripe_gateway.refund_create`, the one module of ours
that talks to Stripe) and deliver refund and charge events hand-signed through the real webhook
endpoint. The last test refunds for real over HTTP against localstripe, which supports refunds.
"""

import httpx
import pytest

from settlement import stripe_gateway
from settlement.models import (
    LedgerAccount,
    LedgerTransaction,
    StripeEvent,
    TopUp,
    Withdrawal,
)
from settlement.selectors import account_balance
from settlement.services import (
    ledger_check,
    platform_account,
    withdrawal_request,
    withdrawal_send,
)
from tests.localstripe import poll
from tests.settlement import connect_events as ce
from tests.settlement import stripe_events as se

Kind = LedgerAccount.Kind


@pytest.fixture(autouse=True)
def _webhook_secret(settings):
    settings.STRIPE_WEBHOOK_SECRET = ce.SECRET
    settings.STRIPE_WEBHOOK_TOLERANCE_SECONDS = 300


class FakeRefunds:
    def __init__(self):
        self.calls: list[dict] = []
        self.status = "succeeded"
        self.refuse_intents: set[str] = set()

    def refund_create(self, **call) -> stripe_gateway.RefundResult:
        self.calls.append(call)
        if call["payment_intent_id"] in self.refuse_intents:
            raise stripe_gateway.RequestRefused("Charge has already been refunded.")
        return stripe_gateway.RefundResult(
            id=f"re_{len(self.calls)}", status=self.status, amount_cents=call["amount_cents"]
        )


@pytest.fixture
def refunds(monkeypatch) -> FakeRefunds:
    # The edge we own: the gateway is our only door to Stripe, so faking it here keeps all of
    # our own code under test.
    fake = FakeRefunds()
    monkeypatch.setattr(stripe_gateway, "refund_create", fake.refund_create)
    return fake


@pytest.fixture
def stripe(client, django_capture_on_commit_callbacks) -> ce.Stripe:
    return ce.Stripe(client, django_capture_on_commit_callbacks)


def _paid_topup(stripe: ce.Stripe, org, cents: int, n: int) -> TopUp:
    """A top-up credited the real way: a signed payment_intent.succeeded."""
    topup = TopUp.objects.create(
        org=org,
        amount_micro=cents * 10_000,
        method=TopUp.Method.PAYMENT_INTENT,
        status=TopUp.Status.PENDING,
        idempotency_key=f"topup-{n}",
        request_fingerprint="f",
        stripe_payment_intent_id=f"pi_w_{n}",
    )
    stripe.send("payment_intent.succeeded", se.payment_intent(topup))
    topup.refresh_from_db()
    assert topup.status == TopUp.Status.SUCCEEDED
    return topup


@pytest.fixture
def topups(stripe, buyer) -> list[TopUp]:
    """$30 then $50 paid; newest ($50) is refunded first."""
    return [_paid_topup(stripe, buyer.org, 3_000, 1), _paid_topup(stripe, buyer.org, 5_000, 2)]


def _balances(org_id: int) -> tuple[int, int, int]:
    """(available, held, stripe_clearing)."""
    return (
        account_balance(org_id=org_id, kind=Kind.AVAILABLE),
        account_balance(org_id=org_id, kind=Kind.HELD),
        platform_account(kind=Kind.STRIPE_CLEARING).balance_micro,
    )


def _withdraw(buyer, capture, amount_micro: int, key: str = "withdraw-1") -> Withdrawal:
    with capture(execute=True):
        withdrawal = withdrawal_request(
            principal=buyer, amount_micro=amount_micro, idempotency_key=key
        )
    withdrawal.refresh_from_db()
    return withdrawal


def _parts(withdrawal: Withdrawal) -> list[tuple[str, int, str]]:
    return list(
        withdrawal.refunds.order_by("id").values_list(
            "topup__stripe_payment_intent_id", "amount_micro", "status"
        )
    )


pytestmark = pytest.mark.django_db


def test_a_withdrawal_spreads_over_the_newest_top_ups_and_refunds_each_once(
    buyer, topups, refunds, django_capture_on_commit_callbacks
):
    withdrawal = _withdraw(buyer, django_capture_on_commit_callbacks, 60_000_000)

    assert _parts(withdrawal) == [
        ("pi_w_2", 50_000_000, "succeeded"),
        ("pi_w_1", 10_000_000, "succeeded"),
    ]
    assert [(c["payment_intent_id"], c["amount_cents"]) for c in refunds.calls] == [
        ("pi_w_2", 5_000),
        ("pi_w_1", 1_000),
    ]
    assert {c["idempotency_key"] for c in refunds.calls} == {
        f"withdrawal-refund:{part.id}" for part in withdrawal.refunds.all()
    }
    assert (withdrawal.status, withdrawal.refunded_micro) == ("succeeded", 60_000_000)
    assert withdrawal.completed_at is not None
    assert [t.refunded_micro for t in TopUp.objects.order_by("id")] == [10_000_000, 50_000_000]
    assert _balances(buyer.org.id) == (20_000_000, 0, -20_000_000)
    kinds = LedgerTransaction.objects.filter(reference=withdrawal.hold_reference).values_list(
        "kind", flat=True
    )
    assert sorted(kinds) == ["hold", "withdrawal", "withdrawal"]
    assert ledger_check() == []


def test_a_refused_refund_returns_its_part_to_available(
    buyer, topups, refunds, django_capture_on_commit_callbacks
):
    refunds.refuse_intents = {"pi_w_1"}

    withdrawal = _withdraw(buyer, django_capture_on_commit_callbacks, 60_000_000)

    assert _parts(withdrawal) == [
        ("pi_w_2", 50_000_000, "succeeded"),
        ("pi_w_1", 10_000_000, "failed"),
    ]
    assert (withdrawal.status, withdrawal.refunded_micro, withdrawal.returned_micro) == (
        "partial",
        50_000_000,
        10_000_000,
    )
    assert _balances(buyer.org.id) == (30_000_000, 0, -30_000_000)
    assert ledger_check() == []


def test_a_withdrawal_is_refused_when_available_or_the_cards_cannot_cover_it(
    buyer, topups, refunds, fund, api_for
):
    client = api_for(buyer, scopes=["read", "payouts"])

    too_much = client.post("/api/v1/withdrawals", {"amount": "80.01"}, format="json")
    fund(buyer.org.id, 10_000_000)  # $10 credited other than by card can't go back to a card
    not_refundable = client.post("/api/v1/withdrawals", {"amount": "85.00"}, format="json")
    sub_cent = client.post("/api/v1/withdrawals", {"amount": "1.001"}, format="json")

    assert (too_much.status_code, too_much.json()["error"]["code"]) == (402, "insufficient_funds")
    assert (not_refundable.status_code, not_refundable.json()["error"]["code"]) == (
        409,
        "withdrawal_exceeds_refundable",
    )
    assert sub_cent.status_code == 400
    assert not Withdrawal.objects.exists()
    assert refunds.calls == []
    assert _balances(buyer.org.id)[:2] == (90_000_000, 0)
    assert ledger_check() == []


def test_post_withdrawals_answers_201_and_a_retry_returns_the_first(
    buyer, topups, refunds, api_for, django_capture_on_commit_callbacks
):
    client = api_for(buyer, scopes=["read", "payouts"])
    body, key = {"amount": "25.00"}, "withdraw-1234"
    with django_capture_on_commit_callbacks(execute=True):
        first = client.post("/api/v1/withdrawals", body, format="json", HTTP_IDEMPOTENCY_KEY=key)
    second = client.post("/api/v1/withdrawals", body, format="json", HTTP_IDEMPOTENCY_KEY=key)

    assert first.status_code == 201, first.json()
    assert first.json()["refunds"] == [
        {"topup_id": topups[1].id, "amount": "25.000000", "status": "pending", "failure_reason": ""}
    ]
    assert second.json()["id"] == first.json()["id"]
    listed = client.get("/api/v1/withdrawals").json()["results"]
    assert [(w["status"], w["refunded"]) for w in listed] == [("succeeded", "25.000000")]
    assert len(refunds.calls) == 1
    assert ledger_check() == []


def test_a_later_withdrawal_never_refunds_more_than_a_top_up_has_left(
    buyer, topups, refunds, django_capture_on_commit_callbacks
):
    _withdraw(buyer, django_capture_on_commit_callbacks, 40_000_000, key="first-one")
    second = _withdraw(buyer, django_capture_on_commit_callbacks, 30_000_000, key="second-one")

    assert _parts(second) == [
        ("pi_w_2", 10_000_000, "succeeded"),
        ("pi_w_1", 20_000_000, "succeeded"),
    ]
    assert [t.refunded_micro for t in TopUp.objects.order_by("id")] == [20_000_000, 50_000_000]
    assert ledger_check() == []


# Stripe's refund events and charge.refunded, one story


def test_charge_refunded_for_a_withdrawals_own_refund_debits_nothing_more(
    buyer, topups, refunds, stripe, django_capture_on_commit_callbacks
):
    _withdraw(buyer, django_capture_on_commit_callbacks, 20_000_000)
    assert _balances(buyer.org.id) == (60_000_000, 0, -60_000_000)

    # Stripe reports the charge with the withdrawal's $20 refunded.
    stripe.send("charge.refunded", se.charge(topups[1], refunded_cents=2_000))

    assert StripeEvent.objects.filter(type="charge.refunded").get().status == "processed"
    assert _balances(buyer.org.id) == (60_000_000, 0, -60_000_000)
    assert not LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.TOPUP_REFUND).exists()
    assert ledger_check() == []


def test_a_dashboard_refund_on_the_same_charge_is_debited_once_beside_the_withdrawal(
    buyer, topups, refunds, stripe, django_capture_on_commit_callbacks
):
    _withdraw(buyer, django_capture_on_commit_callbacks, 20_000_000)

    # Staff refund another $5 from the dashboard: the charge now shows $25 refunded.
    stripe.send("charge.refunded", se.charge(topups[1], refunded_cents=2_500))
    stripe.send("charge.refunded", se.charge(topups[1], refunded_cents=2_500))

    topups[1].refresh_from_db()
    assert topups[1].refunded_micro == 25_000_000
    assert _balances(buyer.org.id) == (55_000_000, 0, -55_000_000)
    debit = LedgerTransaction.objects.get(kind=LedgerTransaction.Kind.TOPUP_REFUND)
    assert debit.idempotency_key == f"topup:{topups[1].id}:refunded:5000000"
    assert ledger_check() == []


def test_charge_refunded_waits_while_a_withdrawal_refund_has_no_recorded_outcome(
    buyer, topups, refunds, stripe, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks(execute=False):  # the send has not run yet
        withdrawal = withdrawal_request(principal=buyer, amount_micro=20_000_000)

    refunded = se.event("charge.refunded", se.charge(topups[1], refunded_cents=2_000))
    early = stripe.send_event(refunded)

    assert len(early.retried) == 1
    assert StripeEvent.objects.get(type="charge.refunded").status == StripeEvent.Status.FAILED
    assert _balances(buyer.org.id) == (60_000_000, 20_000_000, -80_000_000)

    withdrawal_send(withdrawal_id=withdrawal.id)
    stripe.send_event(refunded)  # Stripe delivers the same event again

    assert StripeEvent.objects.get(type="charge.refunded").status == StripeEvent.Status.PROCESSED
    assert _balances(buyer.org.id) == (60_000_000, 0, -60_000_000)
    assert ledger_check() == []


def test_a_pending_refund_is_finished_by_its_events_in_any_order(
    buyer, topups, refunds, stripe, django_capture_on_commit_callbacks
):
    refunds.status = "pending"
    withdrawal = _withdraw(buyer, django_capture_on_commit_callbacks, 20_000_000)
    part = withdrawal.refunds.get()
    assert (part.status, part.stripe_refund_id) == ("sent", "re_1")
    assert _balances(buyer.org.id) == (60_000_000, 20_000_000, -80_000_000)

    stripe.send("charge.refund.updated", ce.refund(part, refund_id="re_1", status="succeeded"))
    stripe.send("refund.created", ce.refund(part, refund_id="re_1", status="pending"))  # stale

    withdrawal.refresh_from_db()
    assert withdrawal.status == Withdrawal.Status.SUCCEEDED
    assert _balances(buyer.org.id) == (60_000_000, 0, -60_000_000)
    assert ledger_check() == []


def test_a_refund_that_fails_after_it_succeeded_returns_to_available_once(
    buyer, topups, refunds, stripe, django_capture_on_commit_callbacks
):
    withdrawal = _withdraw(buyer, django_capture_on_commit_callbacks, 20_000_000)
    part = withdrawal.refunds.get()

    failed = ce.refund(part, refund_id="re_1", status="failed")
    stripe.send("refund.failed", failed)
    stripe.send("refund.updated", failed)
    stripe.send("refund.updated", ce.refund(part, refund_id="re_1", status="succeeded"))  # stale

    part.refresh_from_db()
    withdrawal.refresh_from_db()
    assert (part.status, part.failure_reason) == ("failed", "expired_or_canceled_card")
    assert (withdrawal.status, withdrawal.returned_micro) == ("failed", 20_000_000)
    topups[1].refresh_from_db()
    assert topups[1].refunded_micro == 0
    assert _balances(buyer.org.id) == (80_000_000, 0, -80_000_000)
    assert ledger_check() == []


def test_a_refund_event_that_is_not_a_withdrawals_changes_nothing(buyer, topups, stripe):
    stripe.send(
        "refund.updated",
        {"id": "re_dash", "object": "refund", "amount": 500, "status": "succeeded"},
    )

    assert StripeEvent.objects.get(type="refund.updated").status == "processed"
    assert _balances(buyer.org.id) == (80_000_000, 0, -80_000_000)
    assert ledger_check() == []


# Real HTTP against localstripe


@pytest.mark.localstripe
@pytest.mark.django_db(transaction=True)
def test_a_withdrawal_is_refunded_by_localstripe_over_http(localstripe, buyer, api_for):
    client = api_for(buyer, scopes=["read", "trade", "payouts"])
    topup = client.post(
        "/api/v1/topups", {"amount": "50.00", "payment_method": "pm_card_visa"}, format="json"
    ).json()
    poll(lambda: TopUp.objects.get(pk=topup["id"]).status == TopUp.Status.SUCCEEDED)

    # The send task runs at commit (eagerly in tests) and calls localstripe for real.
    response = client.post(
        "/api/v1/withdrawals", {"amount": "20.00"}, format="json", HTTP_IDEMPOTENCY_KEY="wd-real-1"
    )

    assert response.status_code == 201, response.json()
    withdrawal = Withdrawal.objects.get(pk=response.json()["id"])
    assert withdrawal.status == Withdrawal.Status.SUCCEEDED
    part = withdrawal.refunds.get()
    assert part.stripe_refund_id.startswith("re_")
    intent_id = TopUp.objects.get(pk=topup["id"]).stripe_payment_intent_id
    listed = httpx.get(
        f"{localstripe.api_base}/v1/refunds",
        params={"payment_intent": intent_id},
        headers={"Authorization": "Bearer sk_test_localstripe"},
        timeout=10,
    ).json()["data"]
    assert [(r["id"], r["amount"]) for r in listed] == [(part.stripe_refund_id, 2_000)]
    assert listed[0]["metadata"]["withdrawal_refund_id"] == str(part.id)
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 30_000_000
    assert account_balance(org_id=buyer.org.id, kind=Kind.HELD) == 0
    assert platform_account(kind=Kind.STRIPE_CLEARING).balance_micro == -30_000_000
    assert TopUp.objects.get(pk=topup["id"]).refunded_micro == 20_000_000
    assert ledger_check() == []
