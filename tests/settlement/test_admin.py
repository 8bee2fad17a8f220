"""The settlement admin: read-only history, the "process again" action, and adjustments."""

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse

from settlement.models import (
    Hold,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    StripeEvent,
    TopUp,
)
from settlement.selectors import account_balance
from settlement.services import (
    hold_place,
    ledger_check,
    platform_account,
    stripe_event_mark_failed,
    stripe_event_process,
    stripe_event_record,
)
from tests.accounts.factories import UserFactory
from tests.settlement import stripe_events as se

pytestmark = pytest.mark.django_db
Kind = LedgerAccount.Kind
MODELS = [LedgerAccount, LedgerTransaction, LedgerEntry, Hold, TopUp, StripeEvent]


def _staff_with(*codenames: str):
    user = UserFactory(is_staff=True)
    user.user_permissions.set(Permission.objects.filter(codename__in=codenames))
    return user


@pytest.fixture
def admin(client, staff):
    client.force_login(staff)
    return client


def _paid_topup(org, *, amount_micro=50_000_000, intent_id="pi_admin_1") -> TopUp:
    topup = TopUp.objects.create(
        org=org,
        amount_micro=amount_micro,
        method=TopUp.Method.PAYMENT_INTENT,
        status=TopUp.Status.PENDING,
        idempotency_key=f"admin-{intent_id}",
        request_fingerprint="f",
        stripe_payment_intent_id=intent_id,
        client_secret=f"{intent_id}_secret_do_not_show",
    )
    event, _ = stripe_event_record(
        event=se.event("payment_intent.succeeded", se.payment_intent(topup))
    )
    stripe_event_process(stripe_event_id=event.id)
    return topup


@pytest.fixture
def history(buyer):
    """A top-up credited by its event, and a hold on part of it: a row in every admin model."""
    topup = _paid_topup(buyer.org)
    hold_place(org_id=buyer.org.id, amount_micro=10_000_000, reference="order:7")
    return topup


def _url(model, view: str, *args) -> str:
    return reverse(f"admin:settlement_{model._meta.model_name}_{view}", args=args)


# Pages and read-only


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_the_list_and_detail_pages_load(admin, history, model):
    obj = model.objects.order_by("id").first()

    listing = admin.get(_url(model, "changelist"))
    detail = admin.get(_url(model, "change", obj.pk))

    assert listing.status_code == 200
    assert detail.status_code == 200
    assert str(model._meta.verbose_name).lower() in listing.content.decode().lower()


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.__name__)
def test_settlement_history_is_read_only_even_for_superusers(admin, history, model):
    obj = model.objects.order_by("id").first()
    count = model.objects.count()

    assert admin.get(_url(model, "add")).status_code == 403
    assert admin.post(_url(model, "add"), {}).status_code == 403
    assert admin.post(_url(model, "delete", obj.pk), {"post": "yes"}).status_code == 403
    detail = admin.get(_url(model, "change", obj.pk)).content.decode()
    assert 'name="_save"' not in detail  # a view page, with nothing to submit
    assert admin.post(_url(model, "change", obj.pk), {}).status_code == 403
    assert model.objects.count() == count
    assert ledger_check() == []


def test_the_lists_offer_no_bulk_delete(admin, history):
    for model in MODELS:
        assert "delete_selected" not in admin.get(_url(model, "changelist")).content.decode()


def test_the_account_list_shows_formatted_balances(admin, history):
    page = admin.get(_url(LedgerAccount, "changelist")).content.decode()

    assert "$40.00" in page  # available after the $10.00 hold
    assert "$10.00" in page
    assert "-$50.00" in page  # Stripe clearing


def test_a_transaction_page_shows_its_entries(admin, history):
    credit = LedgerTransaction.objects.get(kind=LedgerTransaction.Kind.TOPUP)

    page = admin.get(_url(LedgerTransaction, "change", credit.pk)).content.decode()

    assert "$50.00" in page
    assert "-$50.00" in page
    assert f"topup:{history.id}" in page


def test_a_stripe_event_page_shows_the_payload_pretty_printed(admin, history):
    event = StripeEvent.objects.get()

    page = admin.get(_url(StripeEvent, "change", event.pk)).content.decode()

    assert "<pre>" in page
    assert "  &quot;type&quot;: &quot;payment_intent.succeeded&quot;" in page


def test_a_topup_page_never_shows_the_client_secret(admin, history):
    page = admin.get(_url(TopUp, "change", history.pk)).content.decode()

    assert "pi_admin_1" in page
    assert "secret_do_not_show" not in page


def test_staff_without_view_permission_cannot_see_the_ledger(client, history):
    client.force_login(_staff_with())

    assert client.get(_url(LedgerEntry, "changelist")).status_code == 403


def test_staff_with_view_permission_can_read_but_not_change(client, history):
    client.force_login(_staff_with("view_ledgerentry"))
    entry = LedgerEntry.objects.first()

    assert client.get(_url(LedgerEntry, "changelist")).status_code == 200
    assert client.get(_url(LedgerEntry, "change", entry.pk)).status_code == 200
    assert client.get(_url(LedgerEntry, "add")).status_code == 403


# Process again


@pytest.fixture
def failed_event(buyer):
    topup = TopUp.objects.create(
        org=buyer.org,
        amount_micro=20_000_000,
        method=TopUp.Method.PAYMENT_INTENT,
        status=TopUp.Status.PENDING,
        idempotency_key="failed-event",
        request_fingerprint="f",
        stripe_payment_intent_id="pi_failed_once",
    )
    event, _ = stripe_event_record(
        event=se.event("payment_intent.succeeded", se.payment_intent(topup))
    )
    stripe_event_mark_failed(stripe_event_id=event.id, error="RuntimeError('database hiccup')")
    return event


def _process_again(client, *events):
    return client.post(
        _url(StripeEvent, "changelist"),
        {"action": "process_again", "_selected_action": [e.pk for e in events]},
        follow=True,
    )


def test_process_again_runs_the_task_on_a_failed_event(admin, staff, failed_event, buyer):
    response = _process_again(admin, failed_event)

    assert "Queued 1 event(s)." in response.content.decode()
    failed_event.refresh_from_db()
    assert (failed_event.status, failed_event.last_error) == ("processed", "")
    assert account_balance(org_id=buyer.org.id, kind=Kind.AVAILABLE) == 20_000_000
    log = LogEntry.objects.get(object_id=str(failed_event.pk))
    assert (log.user, log.action_flag) == (staff, CHANGE)
    assert ledger_check() == []


def test_process_again_leaves_processed_events_alone(admin, history):
    event = StripeEvent.objects.get()

    response = _process_again(admin, event)

    assert "1 already processed or ignored" in response.content.decode()
    assert LedgerTransaction.objects.filter(kind=LedgerTransaction.Kind.TOPUP).count() == 1
    assert not LogEntry.objects.exists()


def test_process_again_is_offered_only_with_the_change_permission(client, failed_event):
    client.force_login(_staff_with("view_stripeevent"))

    page = client.get(_url(StripeEvent, "changelist")).content.decode()
    _process_again(client, failed_event)

    assert "process_again" not in page
    failed_event.refresh_from_db()
    assert failed_event.status == StripeEvent.Status.FAILED


# Adjustments


def _adjust_url(org) -> str:
    return reverse("admin:accounts_org_adjust", args=[org.pk])


def _adjust(client, org, *, amount="12.50", kind="available", reason="goodwill", key="adj-key-1"):
    return client.post(
        _adjust_url(org),
        {"account_kind": kind, "amount": amount, "reason": reason, "idempotency_key": key},
    )


def _available(org) -> int:
    return account_balance(org_id=org.id, kind=Kind.AVAILABLE)


def test_the_org_page_offers_the_adjustment_to_permitted_staff(admin, buyer):
    page = admin.get(reverse("admin:accounts_org_change", args=[buyer.org.pk])).content.decode()

    assert 'data-testid="make-adjustment"' in page
    assert _adjust_url(buyer.org) in page


def test_the_adjustment_form_loads_with_a_fresh_idempotency_key(admin, buyer):
    first = admin.get(_adjust_url(buyer.org))
    second = admin.get(_adjust_url(buyer.org))

    assert first.status_code == 200
    key = first.context["form"].initial["idempotency_key"]
    assert len(key) == 32
    assert key != second.context["form"].initial["idempotency_key"]
    assert f'value="{key}"' in first.content.decode()


def test_an_adjustment_credits_with_the_actor_and_reason_and_is_logged(admin, staff, buyer):
    response = _adjust(admin, buyer.org, amount="12.50", reason="goodwill for outage #12")

    assert response.status_code == 302
    assert response.url == reverse("admin:accounts_org_change", args=[buyer.org.pk])
    assert _available(buyer.org) == 12_500_000
    assert platform_account(kind=Kind.ADJUSTMENTS).balance_micro == -12_500_000
    txn = LedgerTransaction.objects.get()
    assert (txn.kind, txn.actor, txn.reason) == ("adjustment", staff, "goodwill for outage #12")
    log = LogEntry.objects.get()
    assert (log.user, log.object_id, log.action_flag) == (staff, str(buyer.org.pk), CHANGE)
    assert f"Ledger adjustment #{txn.pk}: $12.50 to available" in log.get_change_message()
    assert "goodwill for outage #12" in log.get_change_message()
    assert ledger_check() == []


def test_an_adjustment_debits(admin, buyer, fund):
    fund(buyer.org.id, 20_000_000)

    response = _adjust(admin, buyer.org, amount="-5.25", reason="duplicate credit")

    assert response.status_code == 302
    assert _available(buyer.org) == 14_750_000
    assert platform_account(kind=Kind.ADJUSTMENTS).balance_micro == 5_250_000
    assert ledger_check() == []


def test_an_adjustment_credits_a_providers_earnings(admin, provider):
    response = _adjust(admin, provider.org, amount="3.000001", kind="earned", reason="missed usage")

    assert response.status_code == 302
    assert account_balance(org_id=provider.org.id, kind=Kind.EARNED) == 3_000_001
    assert ledger_check() == []


def test_an_adjustment_needs_a_reason(admin, buyer):
    response = _adjust(admin, buyer.org, reason="   ")

    assert response.status_code == 200
    assert response.context["form"].errors["reason"]
    assert not LedgerTransaction.objects.exists()
    assert not LogEntry.objects.exists()


@pytest.mark.parametrize("kind", ["held", "escrow", "payout_pending", "fees"])
def test_an_adjustment_refuses_accounts_backed_by_other_records(admin, buyer, kind):
    response = _adjust(admin, buyer.org, kind=kind)

    assert response.status_code == 200
    assert response.context["form"].errors["account_kind"]
    assert not LedgerTransaction.objects.exists()


@pytest.mark.parametrize("amount", ["0", "abc", "1e3", "1.0000001"])
def test_an_adjustment_refuses_amounts_that_are_not_exact_and_non_zero(admin, buyer, amount):
    response = _adjust(admin, buyer.org, amount=amount)

    assert response.status_code == 200
    assert response.context["form"].errors["amount"]
    assert not LedgerTransaction.objects.exists()


def test_an_adjustment_refuses_to_take_available_below_zero(admin, buyer, fund):
    fund(buyer.org.id, 1_000_000)

    response = _adjust(admin, buyer.org, amount="-1.01", reason="chargeback")

    assert response.status_code == 200
    assert response.context["form"].errors["amount"] == [
        "This would take the Available balance below zero: it holds $1.00."
    ]
    assert "it holds $1.00." in response.content.decode()
    assert _available(buyer.org) == 1_000_000
    assert not LedgerTransaction.objects.filter(kind="adjustment").exists()
    assert ledger_check() == []


def test_a_resubmitted_adjustment_form_adjusts_once(admin, buyer):
    _adjust(admin, buyer.org, key="same-form-1")
    _adjust(admin, buyer.org, key="same-form-1")

    assert _available(buyer.org) == 12_500_000
    assert LedgerTransaction.objects.count() == 1
    assert LogEntry.objects.count() == 1


def test_staff_without_the_permission_cannot_adjust(client, buyer):
    client.force_login(_staff_with("view_org", "change_org"))

    page = client.get(reverse("admin:accounts_org_change", args=[buyer.org.pk]))
    form = client.get(_adjust_url(buyer.org))
    post = _adjust(client, buyer.org)

    assert page.status_code == 200
    assert 'data-testid="make-adjustment"' not in page.content.decode()
    assert (form.status_code, post.status_code) == (403, 403)
    assert not LedgerTransaction.objects.exists()


def test_staff_with_the_permission_can_adjust(client, buyer):
    client.force_login(_staff_with("view_org", "make_adjustment"))

    response = _adjust(client, buyer.org)

    assert response.status_code == 302
    assert _available(buyer.org) == 12_500_000


def test_a_user_who_is_not_staff_is_sent_to_the_login(client, buyer):
    client.force_login(UserFactory())

    response = _adjust(client, buyer.org)

    assert response.status_code == 302
    assert "/admin/login/" in response.url
    assert not LedgerTransaction.objects.exists()
