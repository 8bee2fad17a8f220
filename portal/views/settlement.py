"""Portal pages for settlement: statements (and their CSV), discrepancies, payouts, withdrawals.

A statement reads statement_rows, the selector the REST API reads, and its CSV is built by the
same function as the API's, so the page, its download and the API agree to the micro-dollar.
Payouts and withdrawals call the API's services as the member's Principal; whatever those
refuse comes back on the form, on the field it concerns where there is one. Discrepancies are
read-only here: staff resolve them in the admin console.
"""

import csv
import datetime
import io
import uuid
from dataclasses import dataclass
from urllib.parse import urlencode

from django.conf import settings
from django.contrib import messages
from django.core.paginator import Paginator
from django.db.models import Case, IntegerField, Value, When
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.models import Scope
from core.errors import ApplicationError, IdempotencyKeyReused, InsufficientFunds
from core.units import money_display
from portal.forms import (
    PayoutAccountForm,
    PayoutRequestForm,
    StatementPeriodForm,
    WithdrawalForm,
    form_apply_error,
    price_input_text,
)
from portal.views.access import member_required, principal_for, refuse
from settlement.errors import (
    PayoutAccountMissing,
    PayoutAccountNotReady,
    WithdrawalExceedsRefundable,
)
from settlement.models import Discrepancy, LedgerAccount, LedgerTransaction, PayoutAccount
from settlement.selectors import (
    account_balance,
    discrepancy_list,
    payout_account_get,
    payout_list,
    statement_csv_rows,
    statement_rows,
    statement_totals,
    withdrawal_list,
)
from settlement.services import payout_account_connect, payout_request, withdrawal_request

Kind = LedgerAccount.Kind
# The org accounts in the order money moves through them.
ACCOUNT_ORDER = [kind.value for kind in Kind if kind in LedgerAccount.ORG_KINDS]
MOVEMENT_ORDER = [kind.value for kind in LedgerTransaction.Kind]
DISCREPANCY_PAGE_SIZE = 25
RECENT_ROWS = 20

PROVIDERS_ONLY = "Only provider organisations are paid out. Sign up one that sells tokens."
BUYERS_ONLY = "Only buyer organisations top up, so only they withdraw."
MONEY_OUT_REFUSED = "Your role can see this page but not move money out. Ask an admin or owner."


def _may_move_money_out(request) -> bool:
    return principal_for(request).has_scope(Scope.PAYOUTS)


def _utc_text(moment: datetime.datetime) -> str:
    """An instant as the period links carry it: ISO 8601 in UTC, exact to the microsecond."""
    return moment.astimezone(datetime.UTC).isoformat().replace("+00:00", "Z")


# Statements


@dataclass(frozen=True)
class StatementAccount:
    """One account's statement as the page prints it: opening, movements by kind, closing."""

    kind: str
    label: str
    currency: str
    opening_micro: int
    credits_micro: int
    debits_micro: int
    closing_micro: int
    movements: list[tuple[str, int]]  # (transaction kind's label, net micro-USD), in kind order


def _statement_accounts(rows) -> list[StatementAccount]:
    labels = dict(LedgerTransaction.Kind.choices)
    accounts = []
    for row in sorted(rows, key=lambda r: (r.currency, ACCOUNT_ORDER.index(r.account_kind))):
        movements = sorted(row.movements.items(), key=lambda item: MOVEMENT_ORDER.index(item[0]))
        accounts.append(
            StatementAccount(
                kind=row.account_kind,
                label=Kind(row.account_kind).label,
                currency=row.currency,
                opening_micro=row.opening_micro,
                credits_micro=row.credits_micro,
                debits_micro=row.debits_micro,
                closing_micro=row.closing_micro,
                movements=[(labels.get(kind, kind), net) for kind, net in movements if net],
            )
        )
    return accounts


def _month_start(day: datetime.date) -> datetime.date:
    return day.replace(day=1)


def _period_links(now: datetime.datetime) -> list[dict]:
    """The picker's shortcuts: this month so far and the month before, as day ranges."""
    this_month = _month_start(now.astimezone(datetime.UTC).date())
    last_month_end = this_month - datetime.timedelta(days=1)
    last_month = _month_start(last_month_end)
    return [
        {"label": "This month", "query": ""},
        {
            "label": f"{last_month:%B %Y}",
            "query": urlencode(
                {"period_start": last_month.isoformat(), "period_end": last_month_end.isoformat()}
            ),
        },
    ]


def _period_form(request) -> StatementPeriodForm:
    form = StatementPeriodForm(request.GET, now=timezone.now())
    form.is_valid()
    return form


@member_required
def statements(request):
    org = request.active_membership.org
    form = _period_form(request)
    context = {"form": form, "accounts": None, "period_links": _period_links(form.now)}
    if form.is_valid():
        start, end = form.cleaned_data["period_start"], form.cleaned_data["period_end"]
        rows = statement_rows(org_id=org.id, period_start=start, period_end=end)
        query = urlencode({"period_start": _utc_text(start), "period_end": _utc_text(end)})
        # The picker shows days: the end is exclusive, so its last day is the one before it.
        last_day = (end - datetime.timedelta(microseconds=1)).astimezone(datetime.UTC).date()
        context.update(
            form=StatementPeriodForm(
                initial={
                    "period_start": start.astimezone(datetime.UTC).date().isoformat(),
                    "period_end": last_day.isoformat(),
                },
                now=form.now,
            ),
            period_start=start,
            period_end=end,
            is_so_far=end >= form.now,
            accounts=_statement_accounts(rows),
            totals=statement_totals(rows),
            csv_url=f"{reverse('portal:statement-csv')}?{query}",
        )
    return render(request, "portal/statements.html", context)


@member_required
def statement_csv(request):
    """The statement as CSV, rows built by the same function as the REST API's download."""
    form = _period_form(request)
    if not form.is_valid():
        problems = "; ".join(f"{name}: {' '.join(errors)}" for name, errors in form.errors.items())
        return HttpResponse(problems, status=400, content_type="text/plain; charset=utf-8")
    start, end = form.cleaned_data["period_start"], form.cleaned_data["period_end"]
    org_id = request.active_membership.org_id
    rows = statement_rows(org_id=org_id, period_start=start, period_end=end)
    out = io.StringIO()
    csv.writer(out).writerows(statement_csv_rows(rows))
    response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
    start, end = start.astimezone(datetime.UTC), end.astimezone(datetime.UTC)
    response["Content-Disposition"] = (
        f'attachment; filename="statement-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.csv"'
    )
    return response


# Discrepancies


@member_required
def discrepancies(request):
    org_id = request.active_membership.org_id
    status = request.GET.get("status", "")
    if status not in Discrepancy.Status.values:
        status = ""
    open_first = Case(
        When(status=Discrepancy.Status.OPEN, then=Value(0)),
        default=Value(1),
        output_field=IntegerField(),
    )
    rows = (
        discrepancy_list(org_id=org_id, status=status or None)
        .select_related("buyer_org", "provider_org")
        .order_by(open_first, "-hour", "-id")
    )
    page = Paginator(rows, DISCREPANCY_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "page": page,
        "status": status,
        "status_choices": Discrepancy.Status.choices,
        "open_count": discrepancy_list(org_id=org_id, status=Discrepancy.Status.OPEN).count(),
    }
    return render(request, "portal/discrepancies.html", context)


# Payouts (providers)


def _payout_account_form(account: PayoutAccount | None, data=None) -> PayoutAccountForm:
    initial = {}
    if account is not None:
        initial = {
            "payout_minimum": price_input_text(account.payout_minimum_micro),
            "schedule": account.schedule,
        }
    return PayoutAccountForm(data, initial=initial)


def _payout_request_form(data=None) -> PayoutRequestForm:
    return PayoutRequestForm(data, initial={"idempotency_key": uuid.uuid4()})


def _payouts_page(request, *, account_form=None, payout_form=None, status=200):
    org_id = request.active_membership.org_id
    account = payout_account_get(org_id=org_id)
    allowed = _may_move_money_out(request)
    context = {
        "may_move_money_out": allowed,
        "payout_account": account,
        "account_form": (account_form or _payout_account_form(account)) if allowed else None,
        "payout_form": (payout_form or _payout_request_form()) if allowed else None,
        "earned_micro": account_balance(org_id=org_id, kind=Kind.EARNED),
        "payout_pending_micro": account_balance(org_id=org_id, kind=Kind.PAYOUT_PENDING),
        "payouts": payout_list(org_id=org_id)[:RECENT_ROWS],
        "stripe_return": request.GET.get("stripe", ""),
    }
    return render(request, "portal/payouts.html", context, status=status)


@never_cache  # going back to the page draws a fresh idempotency key
@member_required
def payouts(request):
    """The payout account, earnings, and the payout request form (POST requests a payout)."""
    if not request.active_membership.org.is_provider:
        return refuse(request, PROVIDERS_ONLY)
    if request.method != "POST":
        return _payouts_page(request)
    if not _may_move_money_out(request):
        return refuse(request, MONEY_OUT_REFUSED)
    form = PayoutRequestForm(request.POST)
    if form.is_valid():
        try:
            payout = payout_request(
                principal=principal_for(request),
                amount_micro=form.cleaned_data["amount"],
                idempotency_key=f"portal-{form.cleaned_data['idempotency_key']}",
            )
        except IdempotencyKeyReused:
            # The first submit of this form asked for another amount; a new key asks for this one.
            form.data = form.data.copy()
            form.data["idempotency_key"] = str(uuid.uuid4())
            form.add_error(None, "This form was already used for another payout. Check it.")
        except InsufficientFunds as error:
            form.add_error("amount", error.message)
        except (PayoutAccountMissing, PayoutAccountNotReady) as error:
            form.add_error(None, _account_problem(error))
        except ApplicationError as error:
            form_apply_error(form, error)
        else:
            messages.success(
                request,
                f"Payout #{payout.id} of {money_display(payout.amount_micro)} is requested; "
                "it is paid once Stripe confirms the transfer.",
            )
            return redirect("portal:payouts")
    return _payouts_page(request, payout_form=form)


def _account_problem(error: ApplicationError) -> str:
    if isinstance(error, PayoutAccountMissing):
        return "Connect a Stripe account first, under Payout account."
    return "Finish the onboarding on Stripe first; payouts open once Stripe enables your account."


@require_POST
@member_required
def payout_account_view(request):
    """Save the payout terms, then go to Stripe's onboarding until the account is enabled."""
    if not request.active_membership.org.is_provider:
        return refuse(request, PROVIDERS_ONLY)
    if not _may_move_money_out(request):
        return refuse(request, MONEY_OUT_REFUSED)
    form = PayoutAccountForm(request.POST)
    if form.is_valid():
        page = f"{settings.SITE_URL}{reverse('portal:payouts')}"
        try:
            account, onboarding_url = payout_account_connect(
                principal=principal_for(request),
                payout_minimum_micro=form.cleaned_data["payout_minimum"],
                schedule=form.cleaned_data["schedule"],
                return_url=f"{page}?stripe=return",
                refresh_url=f"{page}?stripe=refresh",
            )
        except ApplicationError as error:
            form_apply_error(form, error)
        else:
            if account.is_enabled:
                messages.success(request, "Your payout terms are saved.")
                return redirect("portal:payouts")
            return redirect(onboarding_url)
    return _payouts_page(request, account_form=form)


# Withdrawals (buyers)


def _withdrawals_page(request, *, form=None):
    org_id = request.active_membership.org_id
    allowed = _may_move_money_out(request)
    context = {
        "may_move_money_out": allowed,
        "form": (form or WithdrawalForm(initial={"idempotency_key": uuid.uuid4()}))
        if allowed
        else None,
        "available_micro": account_balance(org_id=org_id, kind=Kind.AVAILABLE),
        "held_micro": account_balance(org_id=org_id, kind=Kind.HELD),
        "withdrawals": withdrawal_list(org_id=org_id)[:RECENT_ROWS],
    }
    return render(request, "portal/withdrawals.html", context)


@never_cache  # going back to the page draws a fresh idempotency key
@member_required
def withdrawals(request):
    """The available balance, the withdrawal form (POST withdraws) and past withdrawals."""
    if not request.active_membership.org.is_buyer:
        return refuse(request, BUYERS_ONLY)
    if request.method != "POST":
        return _withdrawals_page(request)
    if not _may_move_money_out(request):
        return refuse(request, MONEY_OUT_REFUSED)
    form = WithdrawalForm(request.POST)
    if form.is_valid():
        try:
            withdrawal = withdrawal_request(
                principal=principal_for(request),
                amount_micro=form.cleaned_data["amount"],
                idempotency_key=f"portal-{form.cleaned_data['idempotency_key']}",
            )
        except IdempotencyKeyReused:
            form.data = form.data.copy()
            form.data["idempotency_key"] = str(uuid.uuid4())
            form.add_error(None, "This form was already used for another amount. Check it.")
        except (InsufficientFunds, WithdrawalExceedsRefundable) as error:
            form.add_error("amount", error.message)  # the whole sentence, not only its field part
        except ApplicationError as error:
            form_apply_error(form, error)
        else:
            messages.success(
                request,
                f"Withdrawal #{withdrawal.id} of {money_display(withdrawal.amount_micro)} is "
                "held and on its way back to your cards.",
            )
            return redirect("portal:withdrawals")
    return _withdrawals_page(request, form=form)
