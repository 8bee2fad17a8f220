"""Settlement runs: pay providers for reconciled usage, close entitlements, write statements.

A run settles one period, [period_start, period_end), in one database transaction, and is
idempotent per period: the run row is claimed (inserted, or locked if it exists) in the same
transaction as the money, so a crash leaves nothing and a re-run redoes the period; a re-run
after success finds the row `succeeded` and does nothing. Runs are serialised by one lock, so two
runs (beat and staff, or two periods) never pay the same hour twice.

What a run does, in order:
1. Reconcile (reconciliation.reconcile_period): judge the pair-hours it can see, open
   discrepancies. The scan reaches back over the reports' grace period, so hours that were
   still pending for earlier runs, and hours staff resolved since, are settled now.
2. Aggregate what the primary records drew from each entitlement per hour (one GROUP BY over
   usage draws, which carry their records' hour) and subtract what earlier runs paid or waived
   of the same entitlement-hour (SettledUsage). Of the rest, draws in clear hours are paid in
   full; in resolved hours up to the resolved figure (the tokens below it are waived); in held
   or pending hours nothing.
3. Deliver, per entitlement, by cumulative rounding: charged = floor(paid tokens x price /
   10^6); the increment moves `buyer.escrow -> provider.earned`, less the provider's fee
   (fee so far = floor(charged x fee bp / 10,000), the increment to the platform's `fees`).
4. Close the entitlements that are used up or past `expires_at`, unless some of their draws
   are still held or pending. At close every used token not waived counts as delivered (draws
   the relay made without a usage record included); under `forfeit` the unused tokens are paid
   on to the provider too (less the fee). What is left of the escrow is then the value of the
   unused (refund policy) and waived tokens, returned to `buyer.available`, and whatever the
   contract's value exceeds floor(tokens bought x price / 10^6) by: that last part is the only
   true rounding remainder (trades on the tick grid make it zero) and is booked to `rounding`.
5. Write a statement line per org account for the period, record the totals, run
   `ledger_check`. A breach rolls back everything the run did (a savepoint) and the run is
   committed `failed` with the problems, and settlement_run raises: it fails loudly, pays nothing.

Money is posted with the bulk ledger helper, a batch of entitlements at a time, after locking
every ledger account the run touches once, by ascending id. Lock order: the runs' lock, then
entitlements by id, then ledger accounts by id (as the usage meter: entitlements, accounts).
"""

import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from django.db import transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from accounts.models import User
from core import locks
from core.bulk import rows_insert, rows_update
from core.errors import PermissionDenied
from core.units import bp_floor, cost_floor_micro
from settlement.errors import SettlementPeriodInvalid, SettlementRunFailed
from settlement.models import (
    Discrepancy,
    Entitlement,
    LedgerAccount,
    LedgerTransaction,
    SettledUsage,
    SettlementAudit,
    SettlementRun,
    StatementLine,
    UsageDraw,
)
from settlement.selectors import statement_rows
from settlement.services.batch import TransactionSpec, ledger_post_batch, org_accounts_bulk
from settlement.services.checks import ledger_check
from settlement.services.ledger import Posting, platform_account
from settlement.services.reconciliation import (
    CLEAR,
    HELD,
    PENDING,
    RESOLVED,
    PairHour,
    Reconciliation,
    reconcile_period,
)

logger = logging.getLogger(__name__)
Kind = LedgerAccount.Kind
TxnKind = LedgerTransaction.Kind

ENTITLEMENTS_PER_BATCH = 1_000


def _check_period(period_start: datetime, period_end: datetime) -> None:
    for moment in (period_start, period_end):
        if timezone.is_naive(moment) or moment.utcoffset().total_seconds() != 0:
            raise SettlementPeriodInvalid("A settlement period is given in UTC.")
        if (moment.minute, moment.second, moment.microsecond) != (0, 0, 0):
            raise SettlementPeriodInvalid("A settlement period starts and ends on the hour.")
    if period_end <= period_start:
        raise SettlementPeriodInvalid()


def settlement_run(
    *,
    period_start: datetime,
    period_end: datetime,
    actor: User | None = None,
    now: datetime | None = None,
) -> SettlementRun:
    """Settle [period_start, period_end) once; returns its run. Own transaction (durable).

    `actor` is the staff member who started it (None for the schedule); `now` is the run's
    clock, which decides whether an hour's grace has passed (tests and late re-runs set it).
    Raises SettlementRunFailed, after committing the run as failed, when ledger_check finds
    a breach: then nothing was paid.
    """
    _check_period(period_start, period_end)
    if actor is not None and not (actor.is_active and actor.is_staff):
        raise PermissionDenied("Only staff start settlement runs.")
    run = _run_once(
        period_start=period_start, period_end=period_end, actor=actor, now=now or timezone.now()
    )
    if run.status == SettlementRun.Status.FAILED:
        logger.error("settlement run %s failed ledger_check:\n%s", run.id, run.problems)
        raise SettlementRunFailed(
            f"Settlement of {period_start:%Y-%m-%d %H:%M} to {period_end:%H:%M} failed "
            f"ledger_check and paid nothing: {run.problems}",
            run_id=run.id,
        )
    return run


# ledger_check compares tables query by query. At READ COMMITTED each query sees what
# committed before it, so a trade committing between two of them can look like a breach for
# one look. A real breach stays; the run fails only when every look finds one. (Freezing the
# money tables instead would deadlock with writers that touch them in other orders.)
LEDGER_CHECK_LOOKS = 3


def _ledger_problems() -> list[str]:
    for _ in range(LEDGER_CHECK_LOOKS):
        problems = ledger_check()
        if not problems:
            return []
    return problems


class _LedgerBreach(Exception):
    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("\n".join(problems))


TOTALS = (
    "pair_hours_settled",
    "pair_hours_held",
    "pair_hours_pending",
    "tokens_settled",
    "tokens_waived",
    "delivered_micro",
    "fees_micro",
    "forfeited_micro",
    "refunded_micro",
    "rounding_micro",
    "entitlements_exhausted",
    "entitlements_expired",
)


@transaction.atomic(durable=True)
def _run_once(
    *, period_start: datetime, period_end: datetime, actor: User | None, now: datetime
) -> SettlementRun:
    locks.settlement_runs_lock()
    SettlementRun.objects.bulk_create(
        [SettlementRun(period_start=period_start, period_end=period_end, started_by=actor)],
        ignore_conflicts=True,
    )
    run = SettlementRun.objects.select_for_update().get(
        period_start=period_start, period_end=period_end
    )
    if run.status == SettlementRun.Status.SUCCEEDED:
        return run  # settled before: a re-run pays nothing
    run.attempts += 1
    run.status = SettlementRun.Status.RUNNING
    run.started_at = timezone.now()
    run.started_by = actor or run.started_by
    if actor is not None:
        SettlementAudit.objects.create(
            actor=actor,
            action=SettlementAudit.Action.RUN_STARTED,
            run=run,
            details={"period_start": period_start.isoformat(), "attempt": run.attempts},
        )
    totals = Totals()
    try:
        with transaction.atomic():  # a savepoint: a breach undoes the run's work, not its row
            _settle(run, now=now, totals=totals)
            problems = _ledger_problems()
            if problems:
                raise _LedgerBreach(problems)
    except _LedgerBreach as breach:
        totals = Totals()
        run.status = SettlementRun.Status.FAILED
        run.problems = "\n".join(breach.problems)
    else:
        run.status = SettlementRun.Status.SUCCEEDED
        run.problems = ""
    for name in TOTALS:
        setattr(run, name, getattr(totals, name))
    run.finished_at = timezone.now()
    run.save()
    return run


@dataclass
class Totals:
    pair_hours_settled: int = 0
    pair_hours_held: int = 0
    pair_hours_pending: int = 0
    tokens_settled: int = 0
    tokens_waived: int = 0
    delivered_micro: int = 0
    fees_micro: int = 0
    forfeited_micro: int = 0
    refunded_micro: int = 0
    rounding_micro: int = 0
    entitlements_exhausted: int = 0
    entitlements_expired: int = 0


@dataclass
class _Due:
    """What one entitlement is owed in this run."""

    entitlement: Entitlement
    paid_tokens: int = 0  # this run
    waived_tokens: int = 0  # this run
    hours: dict[datetime, tuple[int, int]] = field(default_factory=dict)  # hour: (paid, waived)


def _drawn(rec: Reconciliation) -> dict[tuple[int, datetime], int]:
    """Tokens drawn per (entitlement, hour): the scan's, and the older hours still to judge."""
    drawn = dict(rec.drawn)
    older = [*rec.resolved_before_scan, *rec.held_before_scan]
    if not older:
        return drawn
    rows = (
        UsageDraw.objects.filter(_draws_in(older))
        .values("entitlement_id", "hour")
        .annotate(tokens=Sum("tokens"))
        .order_by()
    )
    for row in rows:
        drawn[(row["entitlement_id"], row["hour"])] = row["tokens"]
    return drawn


def _draws_in(pair_hours: list[PairHour]) -> Q:
    """The draws of the records of `pair_hours`: by the draw's hour and its record's pair."""
    where = Q()
    for pair_hour in pair_hours:
        where |= Q(
            hour=pair_hour.hour,
            usage_record__buyer_org_id=pair_hour.buyer_org_id,
            usage_record__provider_org_id=pair_hour.provider_org_id,
            usage_record__market_id=pair_hour.market_id,
        )
    return where


def _settled(entitlement_ids: Iterable[int]) -> dict[int, dict[datetime, tuple[int, int]]]:
    """What earlier runs paid and waived per entitlement and hour."""
    settled: dict[int, dict[datetime, tuple[int, int]]] = defaultdict(dict)
    rows = (
        SettledUsage.objects.filter(entitlement_id__in=list(entitlement_ids))
        .values("entitlement_id", "hour")
        .annotate(paid=Sum("tokens_paid"), waived=Sum("tokens_waived"))
        .order_by()
    )
    for row in rows:
        settled[row["entitlement_id"]][row["hour"]] = (row["paid"], row["waived"])
    return settled


def _settle(run: SettlementRun, *, now: datetime, totals: Totals) -> None:
    rec = reconcile_period(period_start=run.period_start, period_end=run.period_end, now=now)
    drawn = _drawn(rec)
    closing_ids = set(
        Entitlement.objects.filter(status=Entitlement.Status.OPEN)
        .filter(Q(expires_at__lte=run.period_end) | Q(tokens_used__gte=F("tokens_bought")))
        .values_list("id", flat=True)
    )
    entitlements = {
        e.id: e
        for e in locks.entitlements_for_update(
            Q(id__in=sorted({eid for eid, _ in drawn} | closing_ids), status="open")
        )
    }
    settled = _settled(entitlements)
    dues = {eid: _Due(entitlement=e) for eid, e in entitlements.items()}
    blocked: set[int] = set()

    states: dict = dict(rec.pair_hours)
    for pair_hour in [*rec.resolved_before_scan, *rec.held_before_scan]:
        states[pair_hour.key] = pair_hour
    by_pair_hour: dict[tuple, list[tuple[int, datetime, int, int]]] = defaultdict(list)
    for (eid, hour), tokens in drawn.items():
        entitlement = entitlements.get(eid)
        if entitlement is None:
            continue  # closed: its close counted every token it had used
        paid, waived = settled[eid].get(hour, (0, 0))
        key = (entitlement.buyer_org_id, entitlement.provider_org_id, entitlement.market_id, hour)
        by_pair_hour[key].append((eid, hour, tokens, paid + waived))

    paid_pair_hours = set()
    for key, items in by_pair_hour.items():
        pair_hour = states.get(key) or PairHour(*key, state=PENDING)
        if not pair_hour.is_settleable:
            blocked.update(eid for eid, _, tokens, done in items if tokens > done)
            continue
        # Draw-down order, so a figure below the meter pays the first-drawn tokens first.
        items.sort(key=lambda item: _drawdown_order(entitlements[item[0]]))
        if pair_hour.state == RESOLVED:
            drawn_total = sum(tokens for _, _, tokens, _ in items)
            paid_before = sum(settled[eid].get(hour, (0, 0))[0] for eid, hour, _, _ in items)
            payable = max(0, drawn_total - pair_hour.waived_tokens - paid_before)
        for eid, hour, tokens, done in items:
            left = tokens - done
            if left <= 0:
                continue
            pay = left if pair_hour.state == CLEAR else min(left, payable)
            if pair_hour.state == RESOLVED:
                payable -= pay
            due = dues[eid]
            due.paid_tokens += pay
            due.waived_tokens += left - pay
            due.hours[hour] = (pay, left - pay)
            paid_pair_hours.add(key)
    settled_discrepancies = [
        pair_hour.discrepancy_id
        for pair_hour in states.values()
        if pair_hour.state == RESOLVED and pair_hour.discrepancy_id is not None
    ]
    if rec.held_before_scan and closing_ids:
        blocked |= _held_entitlements(rec.held_before_scan, closing_ids)

    totals.pair_hours_settled = len(paid_pair_hours)
    totals.pair_hours_held = rec.count(HELD) + len(rec.held_before_scan)
    totals.pair_hours_pending = rec.count(PENDING)
    _pay(run, dues=dues, settled=settled, closing=closing_ids - blocked, totals=totals)
    Discrepancy.objects.filter(id__in=settled_discrepancies, settled_run__isnull=True).update(
        settled_run=run, updated_at=timezone.now()
    )
    _write_statement(run)


def _drawdown_order(entitlement: Entitlement) -> tuple:
    return (entitlement.expires_at, entitlement.created_at, entitlement.id)


def _held_entitlements(held: list[PairHour], candidate_ids: set[int]) -> set[int]:
    """Of the entitlements about to close, those with draws in hours still held."""
    return set(
        UsageDraw.objects.filter(_draws_in(held), entitlement_id__in=sorted(candidate_ids))
        .values_list("entitlement_id", flat=True)
        .distinct()
    )


@dataclass
class _Money:
    """One entitlement's moves in this run; charged_before + every part = value on a close."""

    delivered_micro: int = 0
    charged_after_delivery_micro: int = 0
    delivery_fee_micro: int = 0
    forfeited_micro: int = 0
    forfeit_fee_micro: int = 0
    refunded_micro: int = 0
    rounding_micro: int = 0
    charged_micro: int = 0
    status: str = Entitlement.Status.OPEN


def _money(
    entitlement: Entitlement, *, paid_tokens: int, waived_tokens: int, is_closing: bool
) -> _Money:
    """Cumulative rounding: each figure is what is due in total so far, less what was paid."""

    def worth(tokens: int) -> int:
        cost = cost_floor_micro(tokens=tokens, price_micro_per_m=entitlement.price_micro)
        return min(entitlement.value_micro, cost)

    def fee(charged_from: int, charged_to: int) -> int:
        bp = entitlement.provider_fee_bp
        return bp_floor(charged_to, bp) - bp_floor(charged_from, bp)

    charged = entitlement.charged_micro
    is_used_up = entitlement.tokens_used >= entitlement.tokens_bought
    if is_closing:
        delivered_tokens = max(paid_tokens, entitlement.tokens_used - waived_tokens)
    else:
        delivered_tokens = paid_tokens
    forfeit_tokens = 0
    if (
        is_closing
        and not is_used_up
        and entitlement.expiry_policy == Entitlement.ExpiryPolicy.FORFEIT
    ):
        forfeit_tokens = entitlement.tokens_bought - entitlement.tokens_used
    after_delivery = max(charged, worth(delivered_tokens))
    after_forfeit = max(after_delivery, worth(delivered_tokens + forfeit_tokens))
    money = _Money(
        delivered_micro=after_delivery - charged,
        charged_after_delivery_micro=after_delivery,
        delivery_fee_micro=fee(charged, after_delivery),
        forfeited_micro=after_forfeit - after_delivery,
        forfeit_fee_micro=fee(after_delivery, after_forfeit),
        charged_micro=after_forfeit,
    )
    if is_closing:
        all_tokens = max(after_forfeit, worth(entitlement.tokens_bought))
        money.refunded_micro = all_tokens - after_forfeit
        money.rounding_micro = entitlement.value_micro - all_tokens
        money.status = Entitlement.Status.EXHAUSTED if is_used_up else Entitlement.Status.EXPIRED
    return money


def _pay(
    run: SettlementRun,
    *,
    dues: dict[int, _Due],
    settled: dict,
    closing: set[int],
    totals: Totals,
) -> None:
    """Post the deliveries and closes in batches, then record what each entitlement got."""
    now = timezone.now()
    work = []
    for eid, due in dues.items():
        earlier = settled.get(eid, {}).values()
        paid = sum(p for p, _ in earlier) + due.paid_tokens
        waived = sum(w for _, w in earlier) + due.waived_tokens
        money = _money(
            due.entitlement, paid_tokens=paid, waived_tokens=waived, is_closing=eid in closing
        )
        if due.hours or money.charged_micro != due.entitlement.charged_micro or eid in closing:
            work.append((due, money))
    if not work:
        return
    buyers = {due.entitlement.buyer_org_id for due, _ in work}
    providers = {due.entitlement.provider_org_id for due, _ in work}
    accounts = org_accounts_bulk(org_ids=buyers, kinds=[Kind.ESCROW, Kind.AVAILABLE])
    accounts |= org_accounts_bulk(org_ids=providers, kinds=[Kind.EARNED])
    fees_id = platform_account(kind=Kind.FEES).id
    rounding_id = platform_account(kind=Kind.ROUNDING).id
    # Every account once, by ascending id: the batches below then never wait out of order.
    locks.ledger_accounts_for_update([a.id for a in accounts.values()] + [fees_id, rounding_id])

    for start in range(0, len(work), ENTITLEMENTS_PER_BATCH):
        specs: list[TransactionSpec] = []
        for due, money in work[start : start + ENTITLEMENTS_PER_BATCH]:
            e = due.entitlement
            escrow = accounts[(e.buyer_org_id, Kind.ESCROW)].id
            earned = accounts[(e.provider_org_id, Kind.EARNED)].id
            reference = f"entitlement:{e.id}"
            if money.delivered_micro:
                specs.append(
                    TransactionSpec(
                        kind=TxnKind.DELIVERY,
                        reference=reference,
                        # The running total charged is unique per entitlement (the same key as
                        # entitlement_deliver's), so no delivery is ever posted twice.
                        idempotency_key=f"delivery:{e.id}:{money.charged_after_delivery_micro}",
                        postings=[
                            Posting(escrow, -money.delivered_micro),
                            Posting(earned, money.delivered_micro - money.delivery_fee_micro),
                            Posting(fees_id, money.delivery_fee_micro),
                        ],
                    )
                )
            if money.forfeited_micro:
                specs.append(
                    TransactionSpec(
                        kind=TxnKind.EXPIRY,
                        reference=reference,
                        idempotency_key=f"expiry:{e.id}:forfeit",
                        reason="Unused tokens forfeited to the provider.",
                        postings=[
                            Posting(escrow, -money.forfeited_micro),
                            Posting(earned, money.forfeited_micro - money.forfeit_fee_micro),
                            Posting(fees_id, money.forfeit_fee_micro),
                        ],
                    )
                )
            if money.refunded_micro:
                specs.append(
                    TransactionSpec(
                        kind=TxnKind.EXPIRY,
                        reference=reference,
                        idempotency_key=f"expiry:{e.id}:refund",
                        reason="Unused and waived tokens refunded to the buyer.",
                        postings=[
                            Posting(escrow, -money.refunded_micro),
                            Posting(
                                accounts[(e.buyer_org_id, Kind.AVAILABLE)].id, money.refunded_micro
                            ),
                        ],
                    )
                )
            if money.rounding_micro:
                specs.append(
                    TransactionSpec(
                        kind=TxnKind.ROUNDING,
                        reference=reference,
                        idempotency_key=f"rounding:{e.id}",
                        reason="Value above floor(tokens bought x price).",
                        postings=[
                            Posting(escrow, -money.rounding_micro),
                            Posting(rounding_id, money.rounding_micro),
                        ],
                    )
                )
        ledger_post_batch(specs)

    rows_update(
        Entitlement,
        ids=[due.entitlement.id for due, _ in work],
        columns={
            "charged_micro": [money.charged_micro for _, money in work],
            "status": [money.status for _, money in work],
            "closed_at": [
                now if money.status != Entitlement.Status.OPEN else None for _, money in work
            ],
        },
    )
    lines = [
        (due.entitlement.id, hour, parts) for due, _ in work for hour, parts in due.hours.items()
    ]
    rows_insert(
        SettledUsage,
        columns={
            "entitlement_id": [eid for eid, _, _ in lines],
            "hour": [hour for _, hour, _ in lines],
            "tokens_paid": [parts[0] for _, _, parts in lines],
            "tokens_waived": [parts[1] for _, _, parts in lines],
        },
        constants={"run_id": run.id},
    )
    for due, money in work:
        totals.tokens_settled += due.paid_tokens
        totals.tokens_waived += due.waived_tokens
        totals.delivered_micro += money.delivered_micro
        totals.fees_micro += money.delivery_fee_micro + money.forfeit_fee_micro
        totals.forfeited_micro += money.forfeited_micro
        totals.refunded_micro += money.refunded_micro
        totals.rounding_micro += money.rounding_micro
        totals.entitlements_exhausted += money.status == Entitlement.Status.EXHAUSTED
        totals.entitlements_expired += money.status == Entitlement.Status.EXPIRED


def _write_statement(run: SettlementRun) -> None:
    """A line per org account for the run's period, from the ledger (set-based sums)."""
    StatementLine.objects.bulk_create(
        [
            StatementLine(
                run=run,
                org_id=row.org_id,
                account_kind=row.account_kind,
                currency=row.currency,
                opening_micro=row.opening_micro,
                credits_micro=row.credits_micro,
                debits_micro=row.debits_micro,
                closing_micro=row.closing_micro,
                movements=row.movements,
            )
            for row in statement_rows(period_start=run.period_start, period_end=run.period_end)
        ],
        batch_size=1_000,
    )
