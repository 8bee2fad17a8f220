"""Reconciliation: compare the primary meter with the other reports, per pair and hour.

A pair is buyer x provider x market; its hour is the hour a usage record ended in (UTC). For
each pair-hour the primary figure (the billable tokens of the records that drew down: the
relay's, or the provider's where the relay did not serve the request) is compared with each
other report present: the provider's (all of its records in the hour) and the buyer's. A report
is within tolerance when |primary - other| <= max(market floor, primary x market bp / 10,000).
When the relay metered the hour, the provider's report is expected: none at all is a
discrepancy too.

Reports may arrive up to the market's grace period after the hour ends, so an hour is only
judged once that grace has passed: before, it is `pending` (neither paid nor held) and a later
run looks at it again. Judged, it is `clear` (the primary figure settles), `held` (a
Discrepancy is open; nothing of the hour is paid) or `resolved` (staff gave the figure to pay).
A discrepancy is never reopened or rewritten once resolved: the resolved figure stands.
"""

import math
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from django.apps import apps
from django.db import transaction
from django.db.models import Count, Max, Q, Sum
from django.db.models.functions import TruncHour
from django.utils import timezone

from accounts.models import User
from core import locks
from core.errors import PermissionDenied, ValidationFailed
from core.units import BP_PER_UNIT
from settlement.errors import DiscrepancyNotFound, DiscrepancyResolved
from settlement.models import Discrepancy, SettlementAudit, UsageDraw, UsageRecord, UsageSource

HOUR = timedelta(hours=1)

CLEAR = "clear"
HELD = "held"
PENDING = "pending"
RESOLVED = "resolved"

PairKey = tuple[int, int, int, datetime]  # buyer org, provider org, market, hour


def is_within_tolerance(
    *, primary_tokens: int, other_tokens: int, tolerance_bp: int, floor_tokens: int
) -> bool:
    """|primary - other| <= max(floor, primary x bp / 10,000), compared exactly in integers."""
    difference = abs(primary_tokens - other_tokens)
    return difference <= floor_tokens or difference * BP_PER_UNIT <= primary_tokens * tolerance_bp


@dataclass
class PairHour:
    buyer_org_id: int
    provider_org_id: int
    market_id: int
    hour: datetime
    primary_tokens: int = 0
    state: str = PENDING
    # For a resolved hour: the figure staff gave, and how many tokens below the primary meter
    # (as the discrepancy recorded it) that is, which are left unpaid.
    resolved_tokens: int | None = None
    waived_tokens: int = 0
    discrepancy_id: int | None = None

    @property
    def key(self) -> PairKey:
        return (self.buyer_org_id, self.provider_org_id, self.market_id, self.hour)

    @property
    def is_settleable(self) -> bool:
        return self.state in (CLEAR, RESOLVED)


@dataclass
class Reconciliation:
    scan_start: datetime
    period_end: datetime
    pair_hours: dict[PairKey, PairHour] = field(default_factory=dict)
    # Resolved, not yet paid, older than the scan: paid by the run like any settleable hour.
    resolved_before_scan: list[PairHour] = field(default_factory=list)
    # Still open, older than the scan: their entitlements must not close yet.
    held_before_scan: list[PairHour] = field(default_factory=list)
    # Tokens the primary records in the scan drew, by (entitlement, hour).
    drawn: dict[tuple[int, datetime], int] = field(default_factory=dict)

    def count(self, state: str) -> int:
        return sum(1 for pair_hour in self.pair_hours.values() if pair_hour.state == state)


def scan_start_for(*, period_start: datetime) -> datetime:
    """Where a run's scan begins: far enough back that every hour still in grace is seen again.

    An hour is judged once its market's grace has passed; the hourly runs that came before
    this one may have found it still pending, so the scan reaches back over the longest grace
    of any market, plus the hour itself.
    """
    market_model = apps.get_model("marketplace", "Market")
    grace_minutes = market_model.objects.aggregate(most=Max("report_grace_minutes"))["most"] or 0
    return period_start - HOUR * (math.ceil(grace_minutes / 60) + 1)


def _scan(scan_start: datetime, period_end: datetime):
    """Each pair-hour's figures by source, and what each entitlement drew in it.

    Two independent aggregates: the records of the scan grouped by pair, hour and source (a
    record's figure is its billable tokens, however many entitlements it drew from), and their
    draws grouped by entitlement and hour, found by the hour each draw carries from its
    record. The scan's bounds are whole hours, so a draw's hour is inside them exactly when
    its record ended inside them. Returns (figures by pair-hour, tokens drawn by
    (entitlement, hour)).
    """
    rows = (
        UsageRecord.objects.filter(ended_at__gte=scan_start, ended_at__lt=period_end)
        .annotate(hour=TruncHour("ended_at", tzinfo=UTC))
        .values("buyer_org_id", "provider_org_id", "market_id", "hour", "source", "is_primary")
        .annotate(tokens=Sum("billable_tokens"), records=Count("id"))
        .order_by()
    )
    figures: dict[PairKey, dict] = {}
    for row in rows:
        key = (row["buyer_org_id"], row["provider_org_id"], row["market_id"], row["hour"])
        totals = figures.setdefault(key, _empty_figures(key))
        _add(totals, row["source"], row["is_primary"], row["tokens"], row["records"])
    drawn = {
        (row["entitlement_id"], row["hour"]): row["tokens"]
        for row in UsageDraw.objects.filter(hour__gte=scan_start, hour__lt=period_end)
        .values("entitlement_id", "hour")
        .annotate(tokens=Sum("tokens"))
        .order_by()
    }
    return figures, drawn


def _empty_figures(key: PairKey) -> dict:
    return {
        "buyer_org_id": key[0],
        "provider_org_id": key[1],
        "market_id": key[2],
        "hour": key[3],
        "primary": 0,
        "relay_records": 0,
        "provider_tokens": 0,
        "provider_records": 0,
        "buyer_tokens": 0,
        "buyer_records": 0,
    }


def _add(totals: dict, source: str, is_primary: bool, tokens: int, records: int) -> None:
    if is_primary:
        totals["primary"] += tokens
    if source == UsageSource.RELAY:
        totals["relay_records"] += records
    else:
        totals[f"{source}_tokens"] += tokens
        totals[f"{source}_records"] += records


def _worst_gap(row: dict, market) -> tuple[str, int, bool] | None:
    """(source, other tokens, is missing) of the report furthest outside tolerance, or None."""
    primary = row["primary"]
    gaps = []
    if row["provider_records"]:
        gaps.append((UsageSource.PROVIDER, row["provider_tokens"], False))
    elif row["relay_records"]:
        gaps.append((UsageSource.PROVIDER, 0, True))
    if row["buyer_records"]:
        gaps.append((UsageSource.BUYER, row["buyer_tokens"], False))
    outside = [
        gap
        for gap in gaps
        if gap[2]
        or not is_within_tolerance(
            primary_tokens=primary,
            other_tokens=gap[1],
            tolerance_bp=market.reconcile_tolerance_bp,
            floor_tokens=market.reconcile_floor_tokens,
        )
    ]
    if not outside:
        return None
    return max(outside, key=lambda gap: abs(primary - gap[1]))


def _as_pair_hour(discrepancy: Discrepancy) -> PairHour:
    return PairHour(
        buyer_org_id=discrepancy.buyer_org_id,
        provider_org_id=discrepancy.provider_org_id,
        market_id=discrepancy.market_id,
        hour=discrepancy.hour,
        primary_tokens=discrepancy.primary_tokens,
        state=RESOLVED if discrepancy.status == Discrepancy.Status.RESOLVED else HELD,
        resolved_tokens=discrepancy.resolved_tokens,
        waived_tokens=_waived(discrepancy),
        discrepancy_id=discrepancy.id,
    )


def _waived(discrepancy: Discrepancy) -> int:
    if discrepancy.resolved_tokens is None:
        return 0
    return max(0, discrepancy.primary_tokens - discrepancy.resolved_tokens)


def reconcile_period(
    *, period_start: datetime, period_end: datetime, now: datetime | None = None
) -> Reconciliation:
    """Judge every pair-hour the run for this period looks at; open the discrepancies found.

    Inside the settlement run's transaction (it holds the runs' lock, so no two reconcile at
    once). Open discrepancies get the latest figures; resolved ones are left as staff left them.
    """
    now = now or timezone.now()
    scan_start = scan_start_for(period_start=period_start)
    result = Reconciliation(scan_start=scan_start, period_end=period_end)
    market_model = apps.get_model("marketplace", "Market")
    markets = market_model.objects.in_bulk()
    known = {
        (d.buyer_org_id, d.provider_org_id, d.market_id, d.hour): d
        for d in Discrepancy.objects.filter(hour__gte=scan_start, hour__lt=period_end)
    }
    new: list[Discrepancy] = []
    refreshed: list[Discrepancy] = []
    figures, result.drawn = _scan(scan_start, period_end)
    for row in figures.values():
        market = markets[row["market_id"]]
        pair_hour = PairHour(
            buyer_org_id=row["buyer_org_id"],
            provider_org_id=row["provider_org_id"],
            market_id=row["market_id"],
            hour=row["hour"],
            primary_tokens=row["primary"],
        )
        result.pair_hours[pair_hour.key] = pair_hour
        discrepancy = known.get(pair_hour.key)
        if discrepancy is not None:
            pair_hour.discrepancy_id = discrepancy.id
            if discrepancy.is_open:
                pair_hour.state = HELD
                gap = _worst_gap(row, market)
                if gap is not None and (
                    discrepancy.primary_tokens,
                    discrepancy.other_tokens,
                    discrepancy.source,
                    discrepancy.is_missing,
                ) != (row["primary"], gap[1], gap[0], gap[2]):
                    discrepancy.primary_tokens = row["primary"]
                    discrepancy.source, discrepancy.other_tokens, discrepancy.is_missing = gap
                    refreshed.append(discrepancy)
            else:
                pair_hour.state = RESOLVED
                pair_hour.resolved_tokens = discrepancy.resolved_tokens
                pair_hour.waived_tokens = _waived(discrepancy)
            continue
        is_ready = row["hour"] + HOUR + timedelta(minutes=market.report_grace_minutes) <= now
        if not is_ready:
            continue  # pending: reports may still come
        gap = _worst_gap(row, market)
        if gap is None:
            pair_hour.state = CLEAR
            continue
        pair_hour.state = HELD
        source, other_tokens, is_missing = gap
        new.append(
            Discrepancy(
                buyer_org_id=row["buyer_org_id"],
                provider_org_id=row["provider_org_id"],
                market_id=row["market_id"],
                hour=row["hour"],
                primary_tokens=row["primary"],
                other_tokens=other_tokens,
                source=source,
                is_missing=is_missing,
            )
        )
    for discrepancy in Discrepancy.objects.bulk_create(new):
        key = (discrepancy.buyer_org_id, discrepancy.provider_org_id, discrepancy.market_id)
        result.pair_hours[(*key, discrepancy.hour)].discrepancy_id = discrepancy.id
    Discrepancy.objects.bulk_update(
        refreshed, ["primary_tokens", "other_tokens", "source", "is_missing", "updated_at"]
    )
    for discrepancy in Discrepancy.objects.filter(hour__lt=scan_start).filter(
        Q(status=Discrepancy.Status.OPEN)
        | Q(status=Discrepancy.Status.RESOLVED, settled_run__isnull=True)
    ):
        pair_hour = _as_pair_hour(discrepancy)
        if pair_hour.state == RESOLVED:
            result.resolved_before_scan.append(pair_hour)
        else:
            result.held_before_scan.append(pair_hour)
    return result


@transaction.atomic(durable=True)
def discrepancy_resolve(
    *,
    actor: User,
    discrepancy_id: int,
    resolution: str,
    tokens: int | None = None,
    reason: str,
) -> Discrepancy:
    """Resolve an open discrepancy with a figure and a reason, audited. Own transaction.

    `accept_primary` pays the hour on the primary meter, `accept_other` on the other report,
    `stated` on `tokens`. The next settlement run pays the hour's draws on that figure: a figure
    below the primary meter leaves the difference unpaid (waived), and it goes back to the
    buyer when the entitlement closes; a figure above it pays no more than was drawn. Locks the
    discrepancy row.
    """
    if not (actor.is_active and actor.is_staff and actor.has_perm("settlement.change_discrepancy")):
        # The same permission the admin's resolve action asks for, so no path is looser.
        raise PermissionDenied("Only staff allowed to change discrepancies resolve them.")
    if resolution not in Discrepancy.Resolution.values:
        raise ValidationFailed(
            fields={"resolution": [f"Choose one of {', '.join(Discrepancy.Resolution.values)}."]}
        )
    if not reason or not reason.strip():
        raise ValidationFailed(fields={"reason": ["Say why; the reason is kept in the audit."]})
    if resolution == Discrepancy.Resolution.STATED:
        if type(tokens) is not int or tokens < 0:
            raise ValidationFailed(fields={"tokens": ["State a whole number of tokens, >= 0."]})
    elif tokens is not None:
        raise ValidationFailed(fields={"tokens": ["Only a stated resolution takes a figure."]})
    discrepancy = locks.row_for_update("settlement.Discrepancy", discrepancy_id)
    if discrepancy is None:
        raise DiscrepancyNotFound()
    if not discrepancy.is_open:
        raise DiscrepancyResolved()
    figure = {
        Discrepancy.Resolution.ACCEPT_PRIMARY: discrepancy.primary_tokens,
        Discrepancy.Resolution.ACCEPT_OTHER: discrepancy.other_tokens,
        Discrepancy.Resolution.STATED: tokens,
    }[resolution]
    discrepancy.status = Discrepancy.Status.RESOLVED
    discrepancy.resolution = resolution
    discrepancy.resolved_tokens = figure
    discrepancy.reason = reason.strip()
    discrepancy.resolved_by = actor
    discrepancy.resolved_at = timezone.now()
    discrepancy.save(
        update_fields=[
            "status",
            "resolution",
            "resolved_tokens",
            "reason",
            "resolved_by",
            "resolved_at",
            "updated_at",
        ]
    )
    SettlementAudit.objects.create(
        actor=actor,
        action=SettlementAudit.Action.DISCREPANCY_RESOLVED,
        discrepancy=discrepancy,
        reason=discrepancy.reason,
        details={
            "resolution": resolution,
            "resolved_tokens": figure,
            "primary_tokens": discrepancy.primary_tokens,
            "other_tokens": discrepancy.other_tokens,
            "source": discrepancy.source,
        },
    )
    return discrepancy
