"""The operators' settlement console: the dashboard's reads and its admin page.

`console_dashboard` gathers, in a handful of aggregate queries, what an operator checks first:
the money the platform holds for others (escrow outstanding, earnings not yet paid out), the
fees it earned day by day, the last day's metered usage per market, the discrepancies holding
settlement, the payouts Stripe refused, the last settlement runs and their ledger check, and the
last staff actions. It never writes. Money stays integer micro-USD until the `*_display`
properties print it through core.units.
"""

from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta

from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.contrib.contenttypes.models import ContentType
from django.core.exceptions import PermissionDenied
from django.db.models import CharField, Count, Exists, Min, OuterRef, Q, Sum, Value
from django.db.models.functions import Cast, Concat, TruncDate
from django.template.response import TemplateResponse
from django.utils import timezone

from core.units import money_display
from settlement.models import (
    Discrepancy,
    LedgerAccount,
    LedgerEntry,
    Payout,
    SettlementRun,
    UsageRecord,
)

Kind = LedgerAccount.Kind

FEE_DAYS = 14
USAGE_WINDOW = timedelta(hours=24)
RECENT_RUNS = 10
RECENT_FAILED_PAYOUTS = 10
RECENT_ACTIONS = 10

# The dashboard sums what these models hold, so it needs each one's view permission: whoever may
# read the rows one by one may read their sums (superusers hold them all).
DASHBOARD_PERMISSIONS = (
    "settlement.view_ledgeraccount",
    "settlement.view_usagerecord",
    "settlement.view_discrepancy",
    "settlement.view_payout",
    "settlement.view_settlementrun",
)


@dataclass(frozen=True)
class FeeDay:
    day: date
    fees_micro: int
    bar_percent: int  # of the largest day in the window, for the bar drawn beside it

    @property
    def fees_display(self) -> str:
        return money_display(self.fees_micro)


@dataclass(frozen=True)
class MarketUsage:
    market_id: int
    symbol: str
    requests: int
    billable_tokens: int
    entitlement_tokens: int
    payg_tokens: int
    payg_cost_micro: int
    unfunded_tokens: int
    unfunded_micro: int

    @property
    def payg_cost_display(self) -> str:
        return money_display(self.payg_cost_micro)

    @property
    def unfunded_display(self) -> str:
        return money_display(self.unfunded_micro)


@dataclass(frozen=True)
class FailedPayout:
    id: int
    org_name: str
    amount_micro: int
    failure_reason: str
    failed_at: datetime | None
    is_sent_again: bool

    @property
    def amount_display(self) -> str:
        return money_display(self.amount_micro)


@dataclass(frozen=True)
class RunRow:
    id: int
    period_start: datetime
    period_end: datetime
    status: str
    status_label: str
    pair_hours_settled: int
    pair_hours_held: int
    pair_hours_pending: int
    tokens_settled: int
    delivered_micro: int
    fees_micro: int
    problems: list[str]
    started_by: str
    finished_at: datetime | None

    @property
    def is_check_passed(self) -> bool:
        return self.status == SettlementRun.Status.SUCCEEDED

    @property
    def delivered_display(self) -> str:
        return money_display(self.delivered_micro)

    @property
    def fees_display(self) -> str:
        return money_display(self.fees_micro)


@dataclass(frozen=True)
class Dashboard:
    now: datetime
    escrow_outstanding_micro: int
    earned_micro: int
    payout_pending_micro: int
    fees_by_day: list[FeeDay]
    usage_by_market: list[MarketUsage]
    open_discrepancies: int
    oldest_open_discrepancy_hour: datetime | None
    failed_payouts: int
    failed_payouts_micro: int
    failed_payouts_waiting: int  # not sent again yet
    recent_failed_payouts: list[FailedPayout]
    runs: list[RunRow]
    recent_actions: list[LogEntry]

    @property
    def earned_unpaid_micro(self) -> int:
        return self.earned_micro + self.payout_pending_micro

    @property
    def fees_total_micro(self) -> int:
        return sum(day.fees_micro for day in self.fees_by_day)

    @property
    def escrow_outstanding_display(self) -> str:
        return money_display(self.escrow_outstanding_micro)

    @property
    def earned_unpaid_display(self) -> str:
        return money_display(self.earned_unpaid_micro)

    @property
    def earned_display(self) -> str:
        return money_display(self.earned_micro)

    @property
    def payout_pending_display(self) -> str:
        return money_display(self.payout_pending_micro)

    @property
    def fees_total_display(self) -> str:
        return money_display(self.fees_total_micro)

    @property
    def failed_payouts_display(self) -> str:
        return money_display(self.failed_payouts_micro)


def _balances_by_kind() -> dict[str, int]:
    rows = (
        LedgerAccount.objects.filter(
            org__isnull=False, kind__in=[Kind.ESCROW, Kind.EARNED, Kind.PAYOUT_PENDING]
        )
        .values("kind")
        .annotate(total=Sum("balance_micro"))
        .order_by()
    )
    return {row["kind"]: row["total"] for row in rows}


def fees_by_day(*, today: date, days: int = FEE_DAYS) -> list[FeeDay]:
    """Net entries on the platform's fees account per UTC day, the last `days` up to `today`.

    Oldest first, days without fees as zero. TruncDate with an explicit zone gives the same days
    on SQLite and PostgreSQL.
    """
    first = today - timedelta(days=days - 1)
    start = datetime(first.year, first.month, first.day, tzinfo=UTC)
    rows = (
        LedgerEntry.objects.filter(
            account__org__isnull=True,
            account__kind=Kind.FEES,
            created_at__gte=start,
            created_at__lt=start + timedelta(days=days),
        )
        .annotate(day=TruncDate("created_at", tzinfo=UTC))
        .values("day")
        .annotate(total=Sum("amount_micro"))
        .order_by()
    )
    totals = {row["day"]: row["total"] for row in rows}
    days_in_window = [first + timedelta(days=n) for n in range(days)]
    amounts = [(day, totals.get(day, 0)) for day in days_in_window]
    largest = max((amount for _, amount in amounts), default=0)
    return [
        FeeDay(
            day=day,
            fees_micro=amount,
            bar_percent=(max(amount, 0) * 100 // largest) if largest > 0 else 0,
        )
        for day, amount in amounts
    ]


def usage_by_market(*, since: datetime, until: datetime) -> list[MarketUsage]:
    """What the primary meter recorded per market for requests that ended in [since, until):
    the billable tokens, how they were paid for, and the pay-as-you-go money taken or owed."""
    rows = (
        UsageRecord.objects.filter(is_primary=True, ended_at__gte=since, ended_at__lt=until)
        .values("market_id", "market__symbol")
        .annotate(
            requests=Count("id"),
            billable=Sum("billable_tokens"),
            entitlement=Sum("entitlement_tokens"),
            payg=Sum("payg_tokens"),
            payg_cost=Sum("payg_cost_micro"),
            unfunded=Sum("unfunded_tokens"),
            unfunded_cost=Sum("unfunded_micro"),
        )
        .order_by("-billable", "market__symbol")
    )
    return [
        MarketUsage(
            market_id=row["market_id"],
            symbol=row["market__symbol"],
            requests=row["requests"],
            billable_tokens=row["billable"],
            entitlement_tokens=row["entitlement"],
            payg_tokens=row["payg"],
            payg_cost_micro=row["payg_cost"],
            unfunded_tokens=row["unfunded"],
            unfunded_micro=row["unfunded_cost"],
        )
        for row in rows
    ]


def _failed_payouts() -> tuple[dict, list[FailedPayout]]:
    # payout_retry sends a failed payout again as a new payout whose key is `retry:<failed id>`;
    # a failed payout with such a sibling needs nothing more from staff.
    sent_again = Payout.objects.filter(
        org_id=OuterRef("org_id"),
        idempotency_key=Concat(Value("retry:"), Cast(OuterRef("id"), CharField())),
    )
    failed = Payout.objects.filter(status=Payout.Status.FAILED).annotate(
        is_sent_again=Exists(sent_again)
    )
    totals = failed.aggregate(
        count=Count("id"),
        amount=Sum("amount_micro", default=0),
        waiting=Count("id", filter=Q(is_sent_again=False)),
    )
    recent = [
        FailedPayout(
            id=payout.id,
            org_name=payout.org.name,
            amount_micro=payout.amount_micro,
            failure_reason=payout.failure_reason,
            failed_at=payout.failed_at,
            is_sent_again=payout.is_sent_again,
        )
        for payout in failed.select_related("org").order_by("-failed_at", "-id")[
            :RECENT_FAILED_PAYOUTS
        ]
    ]
    return totals, recent


def recent_runs(*, limit: int = RECENT_RUNS) -> list[RunRow]:
    runs = SettlementRun.objects.select_related("started_by").order_by("-period_start", "-id")
    return [
        RunRow(
            id=run.id,
            period_start=run.period_start,
            period_end=run.period_end,
            status=run.status,
            status_label=run.get_status_display(),
            pair_hours_settled=run.pair_hours_settled,
            pair_hours_held=run.pair_hours_held,
            pair_hours_pending=run.pair_hours_pending,
            tokens_settled=run.tokens_settled,
            delivered_micro=run.delivered_micro,
            fees_micro=run.fees_micro,
            problems=[line for line in run.problems.splitlines() if line.strip()],
            started_by=run.started_by.email if run.started_by_id else "schedule",
            finished_at=run.finished_at,
        )
        for run in runs[:limit]
    ]


def recent_staff_actions(*, limit: int = RECENT_ACTIONS) -> list[LogEntry]:
    """The admin log of settlement objects and of orgs (where adjustments are logged)."""
    org_type = ContentType.objects.get_by_natural_key("accounts", "org")
    return list(
        LogEntry.objects.filter(Q(content_type__app_label="settlement") | Q(content_type=org_type))
        .select_related("user", "content_type")
        .order_by("-action_time", "-id")[:limit]
    )


def console_dashboard(*, now: datetime | None = None) -> Dashboard:
    """Everything the settlement dashboard shows, as of `now` (default: the current time)."""
    now = now or timezone.now()
    balances = _balances_by_kind()
    discrepancies = Discrepancy.objects.filter(status=Discrepancy.Status.OPEN).aggregate(
        count=Count("id"), oldest=Min("hour")
    )
    payouts, failed = _failed_payouts()
    return Dashboard(
        now=now,
        escrow_outstanding_micro=balances.get(Kind.ESCROW, 0),
        earned_micro=balances.get(Kind.EARNED, 0),
        payout_pending_micro=balances.get(Kind.PAYOUT_PENDING, 0),
        fees_by_day=fees_by_day(today=now.astimezone(UTC).date()),
        usage_by_market=usage_by_market(since=now - USAGE_WINDOW, until=now),
        open_discrepancies=discrepancies["count"],
        oldest_open_discrepancy_hour=discrepancies["oldest"],
        failed_payouts=payouts["count"],
        failed_payouts_micro=payouts["amount"],
        failed_payouts_waiting=payouts["waiting"],
        recent_failed_payouts=failed,
        runs=recent_runs(),
        recent_actions=recent_staff_actions(),
    )


def can_view_dashboard(user) -> bool:
    return user.is_active and user.is_staff and user.has_perms(DASHBOARD_PERMISSIONS)


def settlement_dashboard(request):
    """The console's first page; routed through admin.site.admin_view, so staff only."""
    if not can_view_dashboard(request.user):
        raise PermissionDenied
    context = {
        **admin.site.each_context(request),
        "title": "Settlement console",
        "dashboard": console_dashboard(),
        "can_run_settlement": request.user.has_perm("settlement.run_settlement"),
    }
    return TemplateResponse(request, "admin/settlement/dashboard.html", context)
