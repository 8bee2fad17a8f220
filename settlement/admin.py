"""The operators' console for settlement: the ledger, holds, top-ups and Stripe events.

Everything here is history, so it is read-only for everyone, superusers included: money moves only
through services. The one way staff move money is the adjustment page on an org
(`ledger_adjust`), open to holders of `settlement.make_adjustment`; the staff member and the
reason are kept on the ledger transaction and in the admin log.
"""

import json
import logging
import uuid
from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.shortcuts import get_object_or_404, redirect
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from accounts.admin import OrgAdmin
from accounts.models import Org
from core.errors import ApplicationError, InsufficientFunds
from core.units import UnitError, money_display, money_parse
from settlement.models import (
    Discrepancy,
    Hold,
    LedgerAccount,
    LedgerEntry,
    LedgerTransaction,
    Payout,
    PayoutAccount,
    SettlementAudit,
    SettlementRun,
    StatementLine,
    StripeEvent,
    TopUp,
    UsageDraw,
    UsageRecord,
    Withdrawal,
    WithdrawalRefund,
)
from settlement.services import (
    discrepancy_resolve,
    ledger_adjust,
    payout_retry,
    settlement_run,
)
from settlement.services.ledger import ADJUSTABLE_KINDS
from settlement.tasks import stripe_event_process_task

logger = logging.getLogger(__name__)
Kind = LedgerAccount.Kind

# The admin's front page with the way to the settlement console. Set on the site because
# django.contrib.admin's own templates come first, so an app can't override admin/index.html.
admin.site.index_template = "admin/settlement/index.html"
MAKE_ADJUSTMENT = "settlement.make_adjustment"


def _money(micro: int) -> str:
    return money_display(micro)


def _money_column(field: str, description: str):
    """A read-only changelist or form column showing the integer micro-USD `field` as dollars."""

    @admin.display(description=description)
    def column(self, obj) -> str:
        return _money(getattr(obj, field))

    return column


def _changelist(model, **filters) -> str:
    url = reverse(f"admin:settlement_{model._meta.model_name}_changelist")
    return url + "?" + "&".join(f"{key}={value}" for key, value in filters.items())


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete for anyone: ledger rows are append-only, payments are Stripe's."""

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(LedgerAccount)
class LedgerAccountAdmin(ReadOnlyAdmin):
    list_display = ("id", "owner", "kind", "currency", "balance", "created_at")
    list_filter = ("kind", "currency")
    search_fields = ("org__name", "org__slug")
    list_select_related = ("org",)
    ordering = ("org__name", "kind")
    fields = ("org", "kind", "currency", "balance", "created_at", "entries")
    readonly_fields = fields

    @admin.display(description="owner", ordering="org__name")
    def owner(self, obj: LedgerAccount) -> str:
        return obj.org.name if obj.org_id else "platform"

    @admin.display(description="balance", ordering="balance_micro")
    def balance(self, obj: LedgerAccount) -> str:
        return _money(obj.balance_micro)

    @admin.display(description="entries")
    def entries(self, obj: LedgerAccount) -> str:
        return format_html(
            '<a href="{}">{} entries</a>',
            _changelist(LedgerEntry, account__exact=obj.pk),
            obj.entries.count(),
        )


class LedgerEntryInline(ReadOnlyInline):
    model = LedgerEntry
    fields = ("account", "amount", "balance_after")
    readonly_fields = fields

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("account", "account__org")

    amount = _money_column("amount_micro", "amount")
    balance_after = _money_column("balance_after_micro", "balance after")


@admin.register(LedgerTransaction)
class LedgerTransactionAdmin(ReadOnlyAdmin):
    list_display = ("id", "kind", "reference", "actor", "short_reason", "created_at")
    list_filter = ("kind",)
    search_fields = ("reference", "idempotency_key", "reason", "actor__email")
    list_select_related = ("actor",)
    date_hierarchy = "created_at"
    fields = ("kind", "reference", "idempotency_key", "actor", "reason", "created_at")
    readonly_fields = fields
    inlines = (LedgerEntryInline,)

    @admin.display(description="reason")
    def short_reason(self, obj: LedgerTransaction) -> str:
        return obj.reason if len(obj.reason) <= 60 else obj.reason[:59] + "…"


@admin.register(LedgerEntry)
class LedgerEntryAdmin(ReadOnlyAdmin):
    list_display = ("id", "ledger_transaction", "account", "amount", "balance_after", "created_at")
    list_filter = ("account__kind", "transaction__kind")
    search_fields = ("transaction__reference", "account__org__name")
    list_select_related = ("transaction", "account", "account__org")
    fields = ("ledger_transaction", "account", "amount", "balance_after", "created_at")
    readonly_fields = fields

    @admin.display(description="transaction", ordering="transaction_id")
    def ledger_transaction(self, obj: LedgerEntry) -> str:
        url = reverse("admin:settlement_ledgertransaction_change", args=[obj.transaction_id])
        return format_html('<a href="{}">{}</a>', url, obj.transaction)

    @admin.display(description="amount", ordering="amount_micro")
    def amount(self, obj: LedgerEntry) -> str:
        return _money(obj.amount_micro)

    balance_after = _money_column("balance_after_micro", "balance after")


@admin.register(Hold)
class HoldAdmin(ReadOnlyAdmin):
    list_display = ("reference", "org", "amount", "captured", "released", "remaining", "status")
    list_filter = ("status",)
    search_fields = ("reference", "org__name")
    list_select_related = ("org",)
    fields = (
        "reference",
        "org",
        "status",
        "amount",
        "captured",
        "released",
        "remaining",
        "created_at",
        "closed_at",
        "ledger",
    )
    readonly_fields = fields

    @admin.display(description="amount", ordering="amount_micro")
    def amount(self, obj: Hold) -> str:
        return _money(obj.amount_micro)

    captured = _money_column("captured_micro", "captured")
    released = _money_column("released_micro", "released")
    remaining = _money_column("remaining_micro", "remaining")

    @admin.display(description="ledger")
    def ledger(self, obj: Hold) -> str:
        url = _changelist(LedgerTransaction, reference__exact=obj.reference)
        return format_html('<a href="{}">Transactions of this hold</a>', url)


@admin.register(TopUp)
class TopUpAdmin(ReadOnlyAdmin):
    list_display = ("id", "org", "amount", "status", "method", "refunded", "created_at")
    list_filter = ("status", "method")
    search_fields = (
        "org__name",
        "stripe_payment_intent_id",
        "stripe_checkout_session_id",
        "idempotency_key",
    )
    list_select_related = ("org",)
    # The client secret lets its holder confirm the payment; staff never need it.
    fields = (
        "org",
        "created_by",
        "amount",
        "currency",
        "method",
        "status",
        "failure_message",
        "refunded",
        "idempotency_key",
        "stripe_payment_intent_id",
        "stripe_checkout_session_id",
        "checkout_url",
        "created_at",
        "updated_at",
        "succeeded_at",
        "ledger",
    )
    readonly_fields = fields

    @admin.display(description="amount", ordering="amount_micro")
    def amount(self, obj: TopUp) -> str:
        return _money(obj.amount_micro)

    @admin.display(description="refunded", ordering="refunded_micro")
    def refunded(self, obj: TopUp) -> str:
        return _money(obj.refunded_micro)

    @admin.display(description="ledger")
    def ledger(self, obj: TopUp) -> str:
        url = _changelist(LedgerTransaction, reference__exact=obj.ledger_reference)
        return format_html('<a href="{}">Transactions of this top-up</a>', url)


@admin.register(StripeEvent)
class StripeEventAdmin(ReadOnlyAdmin):
    list_display = ("stripe_id", "type", "status", "attempts", "received_at", "processed_at")
    list_filter = ("status", "type", "livemode")
    search_fields = ("stripe_id",)
    date_hierarchy = "received_at"
    fields = (
        "stripe_id",
        "type",
        "status",
        "attempts",
        "last_error",
        "livemode",
        "stripe_created",
        "received_at",
        "processed_at",
        "pretty_payload",
    )
    readonly_fields = fields
    actions = ("process_again",)

    @admin.display(description="payload")
    def pretty_payload(self, obj: StripeEvent) -> str:
        return format_html("<pre>{}</pre>", json.dumps(obj.payload, indent=2, sort_keys=True))

    def has_process_permission(self, request) -> bool:
        # Processing is idempotent, so this is safe to offer; it still needs a deliberate grant
        # (the model's change permission, which the admin otherwise never uses).
        return request.user.has_perm("settlement.change_stripeevent")

    @admin.action(description="Process the selected events again", permissions=["process"])
    def process_again(self, request, queryset) -> None:
        waiting = [StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED]
        skipped = queryset.exclude(status__in=waiting).count()  # before the tasks change them
        queued = 0
        for event in queryset.filter(status__in=waiting).order_by("id"):
            try:
                stripe_event_process_task.delay(event.id)
            except Exception as error:
                # Under a real broker `delay` only queues; a failure here is the broker's.
                logger.exception("could not queue stripe event %s", event.id)
                self.message_user(
                    request, f"Event {event.stripe_id} was not queued: {error}", messages.ERROR
                )
                continue
            self.log_change(request, event, "Queued for processing again.")
            queued += 1
        note = f"; {skipped} already processed or ignored" if skipped else ""
        self.message_user(request, f"Queued {queued} event(s){note}.", messages.SUCCESS)


class AdjustmentForm(forms.Form):
    """The shape of a ledger adjustment; ledger_adjust decides whether it is allowed."""

    account_kind = forms.ChoiceField(
        label="Account",
        choices=[(kind, Kind(kind).label) for kind in sorted(ADJUSTABLE_KINDS)],
        help_text="Held and escrow always equal the orders and entitlements behind them.",
    )
    amount = forms.CharField(
        label="Amount (USD)",
        max_length=32,
        help_text="Signed: 25.00 credits the account, -25.00 debits it.",
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept with the ledger transaction and shown to auditors.",
    )
    # Drawn with the form, so a double click or a resubmitted page adjusts once.
    idempotency_key = forms.CharField(widget=forms.HiddenInput, max_length=64)

    def clean_amount(self) -> int:
        try:
            return money_parse(self.cleaned_data["amount"], places=6)
        except UnitError as error:
            raise forms.ValidationError(str(error)) from None


def can_make_adjustment(user) -> bool:
    return user.is_active and user.is_staff and user.has_perm(MAKE_ADJUSTMENT)


def _show_service_error(form: AdjustmentForm, error: ApplicationError) -> None:
    placed = False
    for field, problems in error.fields.items():
        if field in form.fields:
            for problem in problems:
                form.add_error(field, problem)
            placed = True
    if not placed:
        form.add_error(None, error.message)


# accounts.admin can't import settlement (imports point settlement → accounts), so the org page
# gets its balances and the adjustment page here, by replacing the registered OrgAdmin.
admin.site.unregister(Org)


@admin.register(Org)
class OrgWithLedgerAdmin(OrgAdmin):
    change_form_template = "admin/settlement/org_change_form.html"
    fields = (*OrgAdmin.fields, "balances")
    readonly_fields = (*OrgAdmin.readonly_fields, "balances")

    @admin.display(description="balances")
    def balances(self, obj: Org) -> str:
        if obj is None or obj.pk is None:
            return "-"
        accounts = LedgerAccount.objects.filter(org=obj).order_by("kind")
        if not accounts:
            return "No ledger accounts yet."
        return format_html(
            "<table>{}</table>",
            format_html_join(
                "",
                '<tr><td>{}</td><td data-kind="{}">{}</td></tr>',
                ((Kind(a.kind).label, a.kind, _money(a.balance_micro)) for a in accounts),
            ),
        )

    def get_urls(self):
        adjust = path(
            "<int:org_id>/adjust/",
            self.admin_site.admin_view(self.adjustment_view),
            name="accounts_org_adjust",
        )
        return [adjust, *super().get_urls()]

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = {
            **(extra_context or {}),
            "can_make_adjustment": can_make_adjustment(request.user),
        }
        return super().change_view(request, object_id, form_url, extra_context)

    def adjustment_view(self, request, org_id: int):
        if not can_make_adjustment(request.user):
            raise PermissionDenied
        org = get_object_or_404(Org, pk=org_id)
        if request.method == "POST":
            form = AdjustmentForm(request.POST)
            if form.is_valid() and (response := self._adjust(request, org, form)):
                return response
        else:
            form = AdjustmentForm(initial={"idempotency_key": uuid.uuid4().hex})
        context = {
            **self.admin_site.each_context(request),
            "title": f"Make an adjustment: {org.name}",
            "opts": self.opts,
            "org": org,
            "form": form,
            "balances": self.balances(org),
        }
        return TemplateResponse(request, "admin/settlement/org_adjustment.html", context)

    def _adjust(self, request, org: Org, form: AdjustmentForm):
        """Call ledger_adjust with the form's data; a redirect on success, None to redraw."""
        data = form.cleaned_data
        # Scoped to the staff member, so nobody can land on another's adjustment by its key.
        key = f"admin:{request.user.pk}:{data['idempotency_key']}"
        is_replay = LedgerTransaction.objects.filter(idempotency_key=f"adjust:{key}").exists()
        try:
            txn = ledger_adjust(
                org=org,
                account_kind=data["account_kind"],
                amount_micro=data["amount"],
                reason=data["reason"],
                actor=request.user,
                idempotency_key=key,
            )
        except InsufficientFunds:
            label = Kind(data["account_kind"]).label
            balance = LedgerAccount.objects.filter(org=org, kind=data["account_kind"]).first()
            held = _money(balance.balance_micro if balance else 0)
            form.add_error(
                "amount",
                f"This would take the {label} balance below zero: it holds {held}.",
            )
            return None
        except ApplicationError as error:
            _show_service_error(form, error)
            return None
        change_url = reverse("admin:accounts_org_change", args=[org.pk])
        if is_replay:
            self.message_user(request, f"Adjustment #{txn.pk} was already made.", messages.INFO)
            return redirect(change_url)
        self.log_change(
            request,
            org,
            f"Ledger adjustment #{txn.pk}: {_money(data['amount'])} to {data['account_kind']}. "
            f"Reason: {txn.reason}",
        )
        self.message_user(
            request,
            f"Adjustment #{txn.pk}: {_money(data['amount'])} to {data['account_kind']}.",
            messages.SUCCESS,
        )
        return redirect(change_url)


@admin.register(PayoutAccount)
class PayoutAccountAdmin(ReadOnlyAdmin):
    list_display = ("org", "stripe_account_id", "onboarding_status", "schedule", "minimum")
    list_filter = ("onboarding_status", "schedule")
    search_fields = ("org__name", "stripe_account_id")
    list_select_related = ("org",)
    fields = (
        "org",
        "stripe_account_id",
        "onboarding_status",
        "schedule",
        "minimum",
        "created_at",
        "updated_at",
    )
    readonly_fields = fields

    @admin.display(description="payout minimum", ordering="payout_minimum_micro")
    def minimum(self, obj: PayoutAccount) -> str:
        return _money(obj.payout_minimum_micro)


@admin.register(Payout)
class PayoutAdmin(ReadOnlyAdmin):
    list_display = ("id", "org", "amount", "status", "origin", "stripe_transfer_id", "created_at")
    list_filter = ("status", "origin")
    search_fields = ("org__name", "stripe_transfer_id", "stripe_account_id", "idempotency_key")
    list_select_related = ("org",)
    date_hierarchy = "created_at"
    fields = (
        "org",
        "requested_by",
        "amount",
        "currency",
        "status",
        "origin",
        "failure_reason",
        "reversed",
        "stripe_account_id",
        "stripe_transfer_id",
        "idempotency_key",
        "send_attempts",
        "created_at",
        "sent_at",
        "paid_at",
        "failed_at",
        "ledger",
    )
    readonly_fields = fields
    actions = ("send_again",)

    @admin.display(description="amount", ordering="amount_micro")
    def amount(self, obj: Payout) -> str:
        return _money(obj.amount_micro)

    reversed = _money_column("reversed_micro", "reversed")

    @admin.display(description="ledger")
    def ledger(self, obj: Payout) -> str:
        url = _changelist(LedgerTransaction, reference__exact=obj.ledger_reference)
        return format_html('<a href="{}">Transactions of this payout</a>', url)

    def has_retry_permission(self, request) -> bool:
        # Moves money (earned → a new payout), so it takes a deliberate grant.
        return request.user.has_perm("settlement.change_payout")

    @admin.action(
        description="Send the selected failed payouts again (as new payouts)", permissions=["retry"]
    )
    def send_again(self, request, queryset) -> None:
        sent = 0
        for payout in queryset.order_by("id"):
            try:
                new = payout_retry(payout_id=payout.id, actor=request.user)
            except ApplicationError as error:
                self.message_user(request, f"Payout #{payout.id}: {error.message}", messages.ERROR)
                continue
            self.log_change(request, payout, f"Sent again as payout #{new.id}.")
            sent += 1
        self.message_user(request, f"Sent {sent} payout(s) again.", messages.SUCCESS)


class WithdrawalRefundInline(ReadOnlyInline):
    model = WithdrawalRefund
    fields = ("topup", "amount", "status", "stripe_refund_id", "failure_reason", "send_attempts")
    readonly_fields = fields

    amount = _money_column("amount_micro", "amount")


@admin.register(Withdrawal)
class WithdrawalAdmin(ReadOnlyAdmin):
    list_display = ("id", "org", "amount", "status", "refunded", "returned", "created_at")
    list_filter = ("status",)
    search_fields = ("org__name", "idempotency_key", "refunds__stripe_refund_id")
    list_select_related = ("org",)
    date_hierarchy = "created_at"
    fields = (
        "org",
        "requested_by",
        "amount",
        "currency",
        "status",
        "refunded",
        "returned",
        "idempotency_key",
        "created_at",
        "completed_at",
        "ledger",
    )
    readonly_fields = fields
    inlines = (WithdrawalRefundInline,)

    @admin.display(description="amount", ordering="amount_micro")
    def amount(self, obj: Withdrawal) -> str:
        return _money(obj.amount_micro)

    refunded = _money_column("refunded_micro", "refunded")
    returned = _money_column("returned_micro", "returned to available")

    @admin.display(description="ledger")
    def ledger(self, obj: Withdrawal) -> str:
        url = _changelist(LedgerTransaction, reference__exact=obj.hold_reference)
        return format_html('<a href="{}">Transactions of this withdrawal</a>', url)


class UsageDrawInline(ReadOnlyInline):
    model = UsageDraw
    fields = ("entitlement", "tokens", "covered_tokens", "created_at")
    readonly_fields = fields


@admin.register(UsageRecord)
class UsageRecordAdmin(ReadOnlyAdmin):
    """What each source reported; the primary records also show how they were paid for."""

    list_display = (
        "id",
        "source",
        "request_id",
        "market",
        "buyer_org",
        "provider_org",
        "billable_tokens",
        "is_primary",
        "payg_cost",
        "unfunded",
        "ended_at",
    )
    list_filter = ("source", "is_primary", "is_estimated", "market")
    search_fields = ("request_id", "buyer_org__name", "provider_org__name")
    list_select_related = ("market", "buyer_org", "provider_org")
    date_hierarchy = "ended_at"
    readonly_fields = [field.name for field in UsageRecord._meta.fields]
    inlines = (UsageDrawInline,)

    @admin.display(description="pay-as-you-go cost", ordering="payg_cost_micro")
    def payg_cost(self, obj: UsageRecord) -> str:
        return _money(obj.payg_cost_micro)

    @admin.display(description="unfunded", ordering="unfunded_micro")
    def unfunded(self, obj: UsageRecord) -> str:
        return _money(obj.unfunded_micro)


RUN_SETTLEMENT = "settlement.run_settlement"
RESOLVE_DISCREPANCY = "settlement.change_discrepancy"


def _staff_form(admin_view, request, *, form, title, submit_label, intro="", facts=()):
    context = {
        **admin_view.admin_site.each_context(request),
        "opts": admin_view.opts,
        "changelist_url": f"admin:settlement_{admin_view.opts.model_name}_changelist",
        "title": title,
        "intro": intro,
        "facts": facts,
        "form": form,
        "submit_label": submit_label,
    }
    return TemplateResponse(request, "admin/settlement/settlement_form.html", context)


class SettlementRunForm(forms.Form):
    period_start = forms.DateTimeField(
        help_text="UTC, on the hour (2026-01-05 14:00). The run settles from that hour."
    )
    hours = forms.IntegerField(min_value=1, max_value=24 * 31, initial=1)


@admin.register(SettlementRun)
class SettlementRunAdmin(ReadOnlyAdmin):
    list_display = (
        "period_start",
        "period_end",
        "status",
        "attempts",
        "pair_hours_settled",
        "pair_hours_held",
        "pair_hours_pending",
        "delivered",
        "refunded",
        "started_by",
        "finished_at",
    )
    list_filter = ("status",)
    date_hierarchy = "period_start"
    readonly_fields = [*(field.name for field in SettlementRun._meta.fields), "statement"]
    actions = ("run_again",)

    @admin.display(description="statement")
    def statement(self, obj: SettlementRun) -> str:
        return format_html(
            '<a href="{}">{} per-org statement lines</a>',
            _changelist(StatementLine, run__id__exact=obj.pk),
            obj.statement.count(),
        )

    @admin.display(description="delivered", ordering="delivered_micro")
    def delivered(self, obj: SettlementRun) -> str:
        return _money(obj.delivered_micro)

    @admin.display(description="refunded", ordering="refunded_micro")
    def refunded(self, obj: SettlementRun) -> str:
        return _money(obj.refunded_micro)

    def has_run_permission(self, request) -> bool:
        user = request.user
        return user.is_active and user.is_staff and user.has_perm(RUN_SETTLEMENT)

    def get_urls(self):
        run_now = path(
            "run/", self.admin_site.admin_view(self.run_view), name="settlement_settlementrun_run"
        )
        return [run_now, *super().get_urls()]

    @admin.action(description="Run the selected periods again (failed ones)", permissions=["run"])
    def run_again(self, request, queryset) -> None:
        for run in queryset.order_by("period_start"):
            self._run(request, run.period_start, run.period_end)

    def run_view(self, request):
        if not self.has_run_permission(request):
            raise PermissionDenied
        form = SettlementRunForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            start = form.cleaned_data["period_start"]
            end = start + timedelta(hours=form.cleaned_data["hours"])
            if self._run(request, start, end):
                return redirect(reverse("admin:settlement_settlementrun_changelist"))
        return _staff_form(
            self,
            request,
            form=form,
            title="Run settlement now",
            submit_label="Run settlement",
            intro="A run is idempotent per period: a settled period is not paid again.",
        )

    def _run(self, request, start, end) -> bool:
        try:
            run = settlement_run(period_start=start, period_end=end, actor=request.user)
        except ApplicationError as error:
            self.message_user(request, error.message, messages.ERROR)
            return False
        note = f"Settlement requested: {run.status}, {run.tokens_settled:,} tokens settled."
        self.log_change(request, run, note)
        self.message_user(request, f"{run}: {run.tokens_settled:,} tokens settled.", messages.INFO)
        return True


class DiscrepancyResolveForm(forms.Form):
    resolution = forms.ChoiceField(choices=Discrepancy.Resolution.choices, widget=forms.RadioSelect)
    tokens = forms.IntegerField(
        required=False, min_value=0, help_text="Billable tokens; only for a stated figure."
    )
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text="Kept in the settlement audit and shown to both orgs.",
    )


@admin.register(Discrepancy)
class DiscrepancyAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "hour",
        "market",
        "buyer_org",
        "provider_org",
        "primary_tokens",
        "other_tokens",
        "source",
        "status",
        "resolve_link",
    )
    list_filter = ("status", "source", "is_missing")
    list_select_related = ("market", "buyer_org", "provider_org")
    # A queue: the open ones first ("open" sorts before "resolved"), the oldest hour first.
    ordering = ("status", "hour", "id")
    search_fields = ("buyer_org__name", "provider_org__name", "market__symbol")
    readonly_fields = [field.name for field in Discrepancy._meta.fields]

    def can_resolve(self, request) -> bool:
        user = request.user
        return user.is_active and user.is_staff and user.has_perm(RESOLVE_DISCREPANCY)

    @admin.display(description="resolve")
    def resolve_link(self, obj: Discrepancy) -> str:
        if not obj.is_open:
            return obj.get_resolution_display()
        url = reverse("admin:settlement_discrepancy_resolve", args=[obj.pk])
        return format_html('<a href="{}">Resolve</a>', url)

    def get_urls(self):
        resolve = path(
            "<int:discrepancy_id>/resolve/",
            self.admin_site.admin_view(self.resolve_view),
            name="settlement_discrepancy_resolve",
        )
        return [resolve, *super().get_urls()]

    def resolve_view(self, request, discrepancy_id: int):
        if not self.can_resolve(request):
            raise PermissionDenied
        discrepancy = get_object_or_404(Discrepancy, pk=discrepancy_id)
        form = DiscrepancyResolveForm(request.POST or None)
        if request.method == "POST" and form.is_valid():
            data = form.cleaned_data
            try:
                discrepancy_resolve(
                    actor=request.user,
                    discrepancy_id=discrepancy.id,
                    resolution=data["resolution"],
                    tokens=data["tokens"],
                    reason=data["reason"],
                )
            except ApplicationError as error:
                _show_service_error(form, error)
            else:
                self.log_change(
                    request, discrepancy, f"Resolved: {data['resolution']}. {data['reason']}"
                )
                self.message_user(request, f"{discrepancy} resolved.", messages.SUCCESS)
                return redirect(reverse("admin:settlement_discrepancy_changelist"))
        facts = (
            ("hour", discrepancy.hour),
            ("buyer", discrepancy.buyer_org),
            ("provider", discrepancy.provider_org),
            ("primary meter", f"{discrepancy.primary_tokens:,} tokens"),
            (discrepancy.get_source_display(), f"{discrepancy.other_tokens:,} tokens"),
        )
        return _staff_form(
            self,
            request,
            form=form,
            title=f"Resolve discrepancy #{discrepancy.pk}",
            submit_label="Resolve",
            intro="The next settlement run pays the hour on the figure you choose.",
            facts=facts,
        )


@admin.register(StatementLine)
class StatementLineAdmin(ReadOnlyAdmin):
    list_display = ("run", "org", "account_kind", "opening", "credits", "debits", "closing")
    list_filter = ("account_kind",)
    search_fields = ("org__name",)
    list_select_related = ("run", "org")
    readonly_fields = [field.name for field in StatementLine._meta.fields]

    opening = _money_column("opening_micro", "opening")
    credits = _money_column("credits_micro", "credits")
    debits = _money_column("debits_micro", "debits")
    closing = _money_column("closing_micro", "closing")


@admin.register(SettlementAudit)
class SettlementAuditAdmin(ReadOnlyAdmin):
    """Who resolved which discrepancy or started which run, when, and why."""

    list_display = ("created_at", "actor", "action", "discrepancy", "run", "short_reason")
    list_filter = ("action",)
    search_fields = ("actor__email", "reason")
    list_select_related = ("actor", "discrepancy", "run")
    date_hierarchy = "created_at"
    ordering = ("-created_at", "-id")
    readonly_fields = [field.name for field in SettlementAudit._meta.fields]

    @admin.display(description="reason")
    def short_reason(self, obj: SettlementAudit) -> str:
        return obj.reason if len(obj.reason) <= 60 else obj.reason[:59] + "…"
