"""Usage metering: take in what the sources report, draw entitlements down, charge the rest.

Ingestion (`usage_ingest`) validates a batch first and writes only the records that pass, all in
one transaction: a bad record is answered `rejected` with a code and never blocks the good ones,
and nothing of a batch that fails half-way stays. Each record is idempotent per (source, source
org, request id). The unique constraint is the guard, not a prior read: the rows are inserted
(plainly, and if any was stored already, again with ON CONFLICT DO NOTHING), sorted by request
id so two concurrent copies of a batch wait on each other in the same order (never a deadlock),
and a row this call did not write was written by an earlier or concurrent call, so its record
is answered `duplicate` with that first result.

Metering (`usage_meter`) runs for the primary records only: the relay where it served the
request, otherwise the provider. Buyers' reports, and a provider's report of a request the relay
served (named by the relay: settlement.models.is_relay_request_id), are kept to reconcile
against the primary figure. For each primary record:
1. Draw the pair's open entitlements in the market down, earliest expiry first, then oldest
   (created, then id); only entitlements bought before the usage ended and expiring after it
   started. The draw raises Entitlement.tokens_used and writes a UsageDraw; the money moves from
   escrow to the provider later, when the settlement run calls `entitlement_deliver`.
2. The rest is pay-as-you-go at the market's reference price (selectors.reference_price_get),
   charged now from the buyer's available balance to the provider's earnings, less the market's
   maker fee (the provider's fee rate on pay-as-you-go, as in the relay) to the platform. It
   never takes the balance below zero: the tokens the balance cannot cover are recorded as
   unfunded, with their cost, on the record and on the pair's PaygMeter.
Costs round cumulatively (core.units.cost_floor_micro, DESIGN.md): the PaygMeter keeps the
remainder of sum(tokens x price) / 10^6, so many small usages cost exactly what one big one does.

Locks, in the core.locks order: the records' unique keys (by the insert), then entitlements by
ascending id, then pay-as-you-go meters by ascending id, then ledger accounts by ascending id.
A batch its entitlements cover is drawn down before the insert on entitlements read without a
lock, and its records written metered; the draw is kept only if the entitlements, once locked,
are as read, so the lock order stays the same and the outcome is what metering under the lock
would give.
"""

import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache
from operator import attrgetter
from typing import NamedTuple

from django.apps import apps
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.base import ModelState
from django.utils import timezone

from accounts.models import Org
from core import locks
from core.bulk import rows_insert, rows_update
from core.rows import ModelColumns, instances, select_list
from core.units import (
    TOKENS_PER_PRICE_UNIT,
    billable_tokens,
    bp_floor,
    cost_floor_micro,
    div_floor,
)
from settlement.errors import UsageBatchTooLarge, UsageSourceNotAllowed, UsageSourceRequired
from settlement.models import (
    Entitlement,
    Hold,
    LedgerAccount,
    LedgerTransaction,
    PaygMeter,
    UsageDraw,
    UsageRecord,
    UsageSource,
    is_relay_request_id,
    relay_hold_reference,
)
from settlement.selectors import payg_tokens_covered, reference_price_get
from settlement.services.batch import TransactionSpec, ledger_post_batch, org_accounts_bulk
from settlement.services.ledger import Posting, ledger_post, platform_account

Kind = LedgerAccount.Kind

MAX_BATCH_RECORDS = 1_000
# No single request reads or writes ten million tokens of one class: the largest context windows
# are a few million tokens. Past that a count is a unit mix-up or a bug, not usage.
MAX_TOKENS_PER_CLASS = 10_000_000
# Longer than any request (streams included) may take.
MAX_REQUEST_DURATION = timedelta(hours=6)
# How far a source's clock may run ahead of ours, and behind the first trade of a pair.
CLOCK_SKEW = timedelta(minutes=5)


class UsageStatus:
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


# Why a record was rejected; each code is stable.
REJECTION_CODES = {
    "negative_tokens": "A token count is below zero.",
    "absurd_tokens": (
        f"A token count is above {MAX_TOKENS_PER_CLASS:,}, or output above the tier's "
        "largest completion."
    ),
    "no_tokens": "Every token count is zero.",
    "invalid_times": (
        f"The request ends before it starts, or lasts longer than {MAX_REQUEST_DURATION}."
    ),
    "in_future": f"The request ends more than {CLOCK_SKEW} in the future.",
    "unknown_market": "No market has this symbol.",
    "unknown_counterparty": "No org with this slug is a buyer (provider reports) or a provider "
    "(buyer reports).",
    "model_not_admitted": "The market's tier does not admit this model.",
    "no_relationship": "The two orgs have no entitlement in this market.",
    "before_relationship": "The request started before the pair's first trade in this market.",
    "request_id_reused": "This request id was already reported with other figures.",
}


class UsageInput(NamedTuple):
    """One record as a source reports it; the counterparty is the other org, by slug.

    A named tuple rather than a frozen dataclass: a batch reads a thousand, and a frozen
    dataclass sets each of its ten fields through object.__setattr__, which made it about three
    times as dear to build; a tuple of plain values is also one the garbage collector stops
    following after its first pass.
    """

    request_id: str
    market: str
    counterparty: str
    model: str
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    started_at: datetime
    ended_at: datetime
    is_estimated: bool = False


@dataclass
class UsageResult:
    index: int
    request_id: str
    status: str
    code: str = ""
    message: str = ""
    record: UsageRecord | None = None


def _source_for(org: Org, source: str | None) -> str:
    if source is None:
        if org.is_provider and org.is_buyer:
            raise UsageSourceRequired(fields={"source": ["Say provider or buyer."]})
        return UsageSource.PROVIDER if org.is_provider else UsageSource.BUYER
    allowed = {UsageSource.PROVIDER: org.is_provider, UsageSource.BUYER: org.is_buyer}
    if not allowed.get(source, False):
        raise UsageSourceNotAllowed(fields={"source": [f"Your org is not a {source} here."]})
    return source


@transaction.atomic(durable=True)
def usage_ingest(
    *, principal, records: Sequence[UsageInput], source: str | None = None
) -> list[UsageResult]:
    """Store a batch of usage reported by the principal's org and meter the primary records.

    The org's role decides the source (provider or buyer); an org that is both says which.
    One result per record, in order. Own transaction (durable).
    """
    if len(records) > MAX_BATCH_RECORDS:
        raise UsageBatchTooLarge()
    source = _source_for(principal.org, source)
    return _ingest(source=source, source_org=principal.org, inputs=records)


@dataclass
class _Lookups:
    markets: dict
    orgs: dict[str, Org]
    relationship_starts: dict[tuple[int, int, int], datetime]


def _lookups(inputs: Sequence[UsageInput], source_org: Org) -> _Lookups:
    """The markets (with their tiers) and orgs a batch names, and its pairs' first trades.

    Written once as SQL (core.rows) rather than compiled by the ORM: a batch's three lookups
    cost the ORM about 3 ms of Python, more than the queries' own time.
    """
    if not inputs:
        return _Lookups(markets={}, orgs={}, relationship_starts={})
    symbols = sorted({item.market.upper() for item in inputs})
    slugs = sorted({item.counterparty for item in inputs})
    market_parts = _market_parts()
    markets = {}
    for row in _rows(_lookup_sql("markets", len(symbols)), symbols):
        market, market.tier = instances(row, market_parts, connection)
        markets[market.symbol] = market
    orgs = {}
    for row in _rows(_lookup_sql("orgs", len(slugs)), slugs):
        [org] = instances(row, _ORG_PARTS, connection)
        orgs[org.slug] = org
    org_ids = sorted({org.id for org in orgs.values()} | {source_org.id})
    market_ids = sorted(market.id for market in markets.values())
    starts = {}
    if market_ids:
        sql = _lookup_sql("starts", len(org_ids), len(market_ids))
        for *pair, first in _rows(sql, [*org_ids, *org_ids, *market_ids]):
            starts[tuple(pair)] = _entitlement_time(first)
    return _Lookups(markets=markets, orgs=orgs, relationship_starts=starts)


_ORG_PARTS = [ModelColumns(Org, "o")]
_LOOKUP_SQL: dict[tuple, str] = {}  # by vendor, lookup and the sizes of its lists


@cache
def _market_parts() -> list[ModelColumns]:
    market_model = apps.get_model("marketplace", "Market")
    tier_model = market_model._meta.get_field("tier").related_model
    return [ModelColumns(market_model, "m"), ModelColumns(tier_model, "t")]


def _lookup_sql(name: str, *sizes: int) -> str:
    key = (connection.vendor, name, *sizes)
    sql = _LOOKUP_SQL.get(key)
    if sql is None:
        sql = _LOOKUP_SQL[key] = _LOOKUP_BUILDERS[name](connection.ops.quote_name, *sizes)
    return sql


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


def _markets_sql(quote, count: int) -> str:
    market_parts = _market_parts()
    market_model, tier_model = (part.model for part in market_parts)
    return (
        f"SELECT {select_list(market_parts, connection)}"  # noqa: S608 (names from our models)
        f" FROM {quote(market_model._meta.db_table)} AS m"
        f" JOIN {quote(tier_model._meta.db_table)} AS t ON t.id = m.tier_id"
        f" WHERE m.symbol IN ({_placeholders(count)})"
    )


def _orgs_sql(quote, count: int) -> str:
    return (
        f"SELECT {select_list(_ORG_PARTS, connection)}"  # noqa: S608 (names from our models)
        f" FROM {quote(Org._meta.db_table)} AS o WHERE o.slug IN ({_placeholders(count)})"
    )


def _starts_sql(quote, org_count: int, market_count: int) -> str:
    return (
        "SELECT buyer_org_id, provider_org_id, market_id, MIN(created_at)"  # noqa: S608
        f" FROM {quote(Entitlement._meta.db_table)}"
        f" WHERE buyer_org_id IN ({_placeholders(org_count)})"
        f" AND provider_org_id IN ({_placeholders(org_count)})"
        f" AND market_id IN ({_placeholders(market_count)})"
        " GROUP BY buyer_org_id, provider_org_id, market_id"
    )


def _rows(sql: str, params: list) -> list[tuple]:
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _entitlement_time(value) -> datetime:
    """An entitlement's created_at as read by hand, converted as the ORM converts the field."""
    field = Entitlement._meta.get_field("created_at")
    column = field.get_col(Entitlement._meta.db_table)
    for convert in connection.ops.get_db_converters(column) + field.get_db_converters(connection):
        value = convert(value, column, connection)
    return value


def _figures_problem(item: UsageInput, latest_end: datetime) -> str | None:
    """The code rejecting a record for its own figures (counts and times), or None."""
    input_tokens, cached_tokens, output_tokens = (
        item.input_tokens,
        item.cached_input_tokens,
        item.output_tokens,
    )
    if input_tokens < 0 or cached_tokens < 0 or output_tokens < 0:
        return "negative_tokens"
    if max(input_tokens, cached_tokens, output_tokens) > MAX_TOKENS_PER_CLASS:
        return "absurd_tokens"
    if not (input_tokens or cached_tokens or output_tokens):
        return "no_tokens"
    started_at, ended_at = item.started_at, item.ended_at
    if ended_at < started_at or ended_at - started_at > MAX_REQUEST_DURATION:
        return "invalid_times"
    if ended_at > latest_end:
        return "in_future"
    return None


@dataclass(frozen=True)
class _Target:
    """What a record's market, counterparty and model name, the same for every record alike."""

    market_id: int
    buyer_org_id: int
    provider_org_id: int
    output_weight_bp: int
    cache_weight_bp: int
    max_output_tokens: int
    # The pair's first trade in the market less the clock skew; None: the pair never traded.
    earliest_start: datetime | None


def _target(item: UsageInput, *, source: str, source_org: Org, lookups: _Lookups) -> _Target | str:
    """The record's market and pair, or the code that rejects every record naming them."""
    market = lookups.markets.get(item.market.upper())
    if market is None:
        return "unknown_market"
    counterparty = lookups.orgs.get(item.counterparty)
    wanted_role = "is_buyer" if source == UsageSource.PROVIDER else "is_provider"
    if counterparty is None or not getattr(counterparty, wanted_role):
        return "unknown_counterparty"
    if not market.tier.admits(item.model):
        return "model_not_admitted"
    buyer_id, provider_id = _pair(source, source_org, counterparty)
    first = lookups.relationship_starts.get((buyer_id, provider_id, market.id))
    return _Target(
        market_id=market.id,
        buyer_org_id=buyer_id,
        provider_org_id=provider_id,
        output_weight_bp=market.output_weight_bp,
        cache_weight_bp=market.cache_weight_bp,
        max_output_tokens=market.tier.max_output_tokens,
        earliest_start=None if first is None else first - CLOCK_SKEW,
    )


def _pair(source: str, source_org: Org, counterparty: Org) -> tuple[int, int]:
    """(buyer org id, provider org id) of a record."""
    if source == UsageSource.PROVIDER:
        return counterparty.id, source_org.id
    return source_org.id, counterparty.id


# The figures a record is identified by beyond its request id: a resend with other figures is
# not a duplicate.
_FIGURES = (
    "market_id",
    "buyer_org_id",
    "provider_org_id",
    "model",
    "input_tokens",
    "cached_input_tokens",
    "output_tokens",
    "started_at",
    "ended_at",
)
# The columns a new record is written with, in the order of the row tuples `_ingest` builds;
# the figures come first so a row's figures are row[1:10]. The rest of the fields are the same
# for the whole batch (`_insert_once`) or their defaults.
_ROW_COLUMNS = (
    "request_id",
    *_FIGURES,
    "billable_tokens",
    "output_weight_bp",
    "cache_weight_bp",
    "is_estimated",
    "is_primary",
)
_IS_PRIMARY = _ROW_COLUMNS.index("is_primary")


def _same_figures(row: tuple, record: UsageRecord) -> bool:
    return all(
        value == getattr(record, name) for name, value in zip(_FIGURES, row[1:10], strict=True)
    )


def _ingest(*, source: str, source_org: Org, inputs: Sequence[UsageInput]) -> list[UsageResult]:
    now = timezone.now()
    latest_end = now + CLOCK_SKEW
    batch_id = uuid.uuid4()
    lookups = _lookups(inputs, source_org)
    results: list[UsageResult] = []
    # Plain tuples in `_ROW_COLUMNS` order: a model instance per row cost more than its insert.
    candidates: dict[str, tuple[int, tuple]] = {}  # by request id, first occurrence
    repeats: list[tuple[UsageResult, tuple]] = []  # same request id later in the batch
    is_provider = source == UsageSource.PROVIDER
    relayed = _relayed_buyers(inputs) if is_provider else {}
    # The records of a batch name a few markets, counterparties and models between them: each
    # combination is looked up once.
    targets: dict[tuple[str, str, str], _Target | str] = {}
    for index, item in enumerate(inputs):
        result = UsageResult(index, item.request_id, "")
        results.append(result)
        code = _figures_problem(item, latest_end)
        if code is None:
            key = (item.market, item.counterparty, item.model)
            target = targets.get(key)
            if target is None:
                target = targets[key] = _target(
                    item, source=source, source_org=source_org, lookups=lookups
                )
            if type(target) is str:
                code = target
            elif item.output_tokens > target.max_output_tokens:
                code = "absurd_tokens"
            elif relayed.get(item.request_id) == target.buyer_org_id:
                pass  # the relay sent the buyer's request to the provider: their relationship
            elif target.earliest_start is None:
                code = "no_relationship"
            elif item.started_at < target.earliest_start:
                code = "before_relationship"
        if code is not None:
            result.status, result.code = UsageStatus.REJECTED, code
            result.message = REJECTION_CODES[code]
            continue
        row = (
            item.request_id,
            target.market_id,
            target.buyer_org_id,
            target.provider_org_id,
            item.model,
            item.input_tokens,
            item.cached_input_tokens,
            item.output_tokens,
            item.started_at,
            item.ended_at,
            billable_tokens(
                input_tokens=item.input_tokens,
                cached_input_tokens=item.cached_input_tokens,
                output_tokens=item.output_tokens,
                output_weight_bp=target.output_weight_bp,
                cache_weight_bp=target.cache_weight_bp,
            ),
            target.output_weight_bp,
            target.cache_weight_bp,
            item.is_estimated,
            # A provider meters its own requests; its report of one the relay served checks
            # the relay's record.
            is_provider and not is_relay_request_id(item.request_id),
        )
        if item.request_id in candidates:
            repeats.append((result, row))
        else:
            candidates[item.request_id] = (index, row)

    stored, plan = _insert_once(
        source=source, source_org=source_org, rows=candidates, batch_id=batch_id, now=now
    )
    # A record this call wrote holds this call's batch id; one read back was written by an
    # earlier or concurrent call, under another id.
    for request_id, (index, row) in candidates.items():
        record = stored[request_id]
        if record.batch_id == batch_id:
            # Written from this very row: its figures are the row's.
            results[index].status, results[index].record = UsageStatus.ACCEPTED, record
        else:
            _answer(results[index], row, record)
    for result, row in repeats:
        _answer(result, row, stored[row[0]])
    usage_meter(
        records=[
            record
            for record in stored.values()
            if record.batch_id == batch_id and record.is_primary
        ],
        plan=plan,
    )
    return results


def _answer(result: UsageResult, row: tuple, record: UsageRecord) -> None:
    """Answer a record stored before (by an earlier call, or earlier in this batch)."""
    if not _same_figures(row, record):
        result.status, result.code = UsageStatus.REJECTED, "request_id_reused"
        result.message = REJECTION_CODES["request_id_reused"]
        return
    result.status = UsageStatus.DUPLICATE
    result.record = record


def _insert_once(
    *, source: str, source_org: Org, rows: dict[str, tuple[int, tuple]], batch_id, now
) -> tuple[dict[str, UsageRecord], "_DrawPlan | None"]:
    """Insert the rows whose request id is new; return the stored record of every request id.

    A provider's record of a request the relay served is a check from the start (the row says
    so); should another primary record of the request be stored all the same (a relay record
    under an id from before relay ids had their own form), the insert skips the row, which is
    then written again as a check record. Only the rows the insert skipped are read back: the
    others are built from what was written and the ids the insert returned.

    A provider's new records are drawn down before the insert, on entitlements read without a
    lock (`_draw_plan`), and written with that outcome, so they need no UPDATE once metered;
    `usage_meter` keeps the plan only if the locked entitlements are what it read. The plan is
    returned, or None when there is none or a skipped row spoilt it.
    """
    if not rows:
        return {}, None
    request_ids = sorted(rows)
    # Sorted by request id, so two copies of a batch take the unique keys in one order.
    pending = [rows[request_id][1] for request_id in request_ids]
    constants = {
        "source": source,
        "source_org_id": source_org.id,
        "batch_id": batch_id,
        "received_at": now,
    }
    # Every field of a draft but the row's: the batch's constants and the defaults.
    fixed = {"id": None, **_record_defaults(), **constants}
    stored: dict[str, UsageRecord] = {}
    plan = None
    for attempt in range(2):
        drafts = _drafts(pending, fixed)
        if attempt == 0 and source == UsageSource.PROVIDER:
            plan = _draw_plan([record for record in drafts if record.is_primary])
        columns = dict(zip(_ROW_COLUMNS, map(list, zip(*pending, strict=True)), strict=True))
        if plan is not None:
            for name in ("metered_at", "entitlement_tokens"):
                columns[name] = [getattr(record, name) for record in drafts]
        ids = dict(_records_insert(columns, constants, expect_new=attempt == 0))
        for record in drafts:
            record_id = ids.get(record.request_id)
            if record_id is not None:
                record.id = record_id
                stored[record.request_id] = record
        pending = [row for row in pending if row[0] not in ids]
        if not pending:
            return stored, plan
        if plan is not None:
            # A skipped row drew in the plan: meter the written ones again, under the locks.
            plan.discard()
            plan = None
        skipped = [row[0] for row in pending]
        for record in UsageRecord.objects.filter(
            source=source, source_org=source_org, request_id__in=skipped
        ):
            stored[record.request_id] = record
        pending = [row for row in pending if row[0] not in stored]
        if not pending:
            return stored, plan
        # Lost the primary slot to another primary record of the request: keep it as a check.
        pending = [_as_check(row) for row in pending]
    raise RuntimeError(f"usage records {[row[0] for row in pending][:5]} not stored")


def _records_insert(
    columns: dict[str, list], constants: dict[str, object], *, expect_new: bool
) -> list[tuple[str, int]]:
    """Insert the records; (request id, id) of each one written, skipping those already stored.

    Nearly every batch is new: on PostgreSQL it is first inserted plainly, in a savepoint,
    because ON CONFLICT DO NOTHING probes every unique index a row falls in before inserting it
    (a quarter of the insert's database time). Any row already stored (a retry, a request the
    relay metered meanwhile) fails that insert whole, and the batch is inserted again skipping
    the rows stored, as every insert did before. A concurrent copy of the batch still makes the
    plain insert wait for its outcome at the same unique keys, in the same order.
    """
    returning = ("request_id", "id")
    if expect_new and connection.vendor == "postgresql":
        try:
            with transaction.atomic():
                return rows_insert(
                    UsageRecord, columns=columns, constants=constants, returning=returning
                )
        except IntegrityError:
            pass  # some row is stored already: the insert below skips it
    return rows_insert(
        UsageRecord,
        columns=columns,
        constants=constants,
        ignore_conflicts=True,
        returning=returning,
    )


def _drafts(rows: list[tuple], fixed: dict[str, object]) -> list[UsageRecord]:
    """A record for each row, not saved yet, with `fixed` giving the fields rows leave out.

    The same instances `Model.from_db` builds for rows it reads, made straight from the field
    values: `Model.__init__` sets each of the 27 fields through its descriptor, which cost more
    than writing the row. No signal listens for these records' creation.
    """
    alias = connection.alias
    new = object.__new__
    drafts = []
    for row in rows:
        state = ModelState()
        state.adding, state.db = False, alias
        record = new(UsageRecord)
        record.__dict__.update(fixed, _state=state)
        record.__dict__.update(zip(_ROW_COLUMNS, row, strict=True))
        drafts.append(record)
    return drafts


def _relayed_buyers(inputs: Sequence[UsageInput]) -> dict[str, int]:
    """The buyer org of each request in the batch the relay admitted pay-as-you-go, by id.

    Such a request is the pair's relationship even when they never traded: its hold, placed
    before the relay sent the request on, names the buyer. A relayed request paid from an
    entitlement has the entitlement's trade for its relationship, as any other.
    """
    request_id_of = {  # hold reference -> request id
        relay_hold_reference(item.request_id): item.request_id
        for item in inputs
        if is_relay_request_id(item.request_id)
    }
    if not request_id_of:
        return {}
    holds = Hold.objects.filter(reference__in=list(request_id_of)).values_list(
        "reference", "org_id"
    )
    return {request_id_of[reference]: org_id for reference, org_id in holds}


def _as_check(row: tuple) -> tuple:
    return (*row[:_IS_PRIMARY], False, *row[_IS_PRIMARY + 1 :])


def _record_defaults() -> dict[str, object]:
    """The fields a new record leaves at their defaults (the metering outcome), by attname."""
    given = {"id", *_ROW_COLUMNS, "source", "source_org_id", "batch_id", "received_at"}
    return {
        field.attname: field.get_default()
        for field in UsageRecord._meta.concrete_fields
        if field.attname not in given
    }


def _in_draw_order(entitlements: list[Entitlement]) -> list[Entitlement]:
    """A pair's entitlements in draw-down order: earliest expiry first, then oldest."""
    return sorted(entitlements, key=lambda e: (e.expires_at, e.created_at, e.id))


def _entitlements_for_update(pairs: set[tuple[int, int, int]]) -> list[Entitlement]:
    """Lock the pairs' open entitlements by ascending id (after orders, before holds)."""
    return _open_entitlements(pairs, lock=True)


@dataclass
class _DrawPlan:
    """New primary records drawn down on entitlements read without a lock, before the insert.

    `tokens_used` is what each entitlement had when read: if the locked ones still have it, the
    draw under the lock would come out the same, and the plan stands.
    """

    records: list[UsageRecord]
    pairs: set[tuple[int, int, int]]
    tokens_used: dict[int, int]
    draws: "_Draws"

    def covers(self, records: Sequence[UsageRecord]) -> bool:
        """Whether `records` are the very records the plan drew (whatever their order)."""
        return len(records) == len(self.records) and set(map(id, records)) == set(
            map(id, self.records)
        )

    def holds(self, locked: list[Entitlement]) -> bool:
        return {
            entitlement.id: entitlement.tokens_used for entitlement in locked
        } == self.tokens_used

    def discard(self) -> None:
        for record in self.records:
            record.metered_at = None
            record.entitlement_tokens = 0


def _open_entitlements(pairs: set[tuple[int, int, int]], *, lock: bool) -> list[Entitlement]:
    """The pairs' open entitlements with tokens left, by ascending id; locked if `lock`."""
    if not pairs:
        return []
    if not lock:
        # Read once a batch before its insert, written once as SQL (core.rows): the ORM
        # compiled this query for about 1 ms of Python a batch.
        pairs = sorted(pairs)
        sql = _lookup_sql("open_entitlements", len(pairs))
        params = [Entitlement.Status.OPEN, *(key for pair in pairs for key in pair)]
        return [instances(row, _ENTITLEMENT_PARTS, connection)[0] for row in _rows(sql, params)]
    match = Q()
    for buyer_id, provider_id, market_id in pairs:
        match |= Q(buyer_org_id=buyer_id, provider_org_id=provider_id, market_id=market_id)
    match &= Q(status=Entitlement.Status.OPEN, tokens_used__lt=F("tokens_bought"))
    return locks.entitlements_for_update(match)


_ENTITLEMENT_PARTS = [ModelColumns(Entitlement, "e")]


def _open_entitlements_sql(quote, pair_count: int) -> str:
    pair = "(e.buyer_org_id = %s AND e.provider_org_id = %s AND e.market_id = %s)"
    return (
        f"SELECT {select_list(_ENTITLEMENT_PARTS, connection)}"  # noqa: S608 (our models' names)
        f" FROM {quote(Entitlement._meta.db_table)} AS e"
        " WHERE e.status = %s AND e.tokens_used < e.tokens_bought"
        f" AND ({' OR '.join([pair] * pair_count)}) ORDER BY e.id"
    )


_LOOKUP_BUILDERS = {
    "markets": _markets_sql,
    "orgs": _orgs_sql,
    "starts": _starts_sql,
    "open_entitlements": _open_entitlements_sql,
}


# The order a batch's records are drawn down in, and the pair (buyer, provider, market) whose
# entitlements a record draws; attrgetter reads them without a Python call per record.
_DRAW_ORDER = attrgetter("ended_at", "request_id")
_PAIR = attrgetter("buyer_org_id", "provider_org_id", "market_id")


def _draw_plan(records: list[UsageRecord]) -> _DrawPlan | None:
    """Draw `records` down on an unlocked read; None unless entitlements cover every token.

    Pay-as-you-go needs the locked balances and meters, so such batches meter after the insert.
    """
    if not records:
        return None
    ordered = sorted(records, key=_DRAW_ORDER)
    keys = list(map(_PAIR, ordered))
    pairs = set(keys)
    entitlements = _open_entitlements(pairs, lock=False)
    tokens_used = {entitlement.id: entitlement.tokens_used for entitlement in entitlements}
    by_pair = _by_pair(entitlements)
    draws = _Draws()
    metered_at = timezone.now()
    plan = _DrawPlan(records=ordered, pairs=pairs, tokens_used=tokens_used, draws=draws)
    for record, key in zip(ordered, keys, strict=True):
        record.metered_at = metered_at
        if _draw(record, by_pair.get(key, ()), draws):
            plan.discard()
            return None
    return plan


def _by_pair(entitlements: list[Entitlement]) -> dict[tuple[int, int, int], list[Entitlement]]:
    """Entitlements by (buyer, provider, market), each pair's in draw-down order."""
    by_pair: dict[tuple[int, int, int], list[Entitlement]] = defaultdict(list)
    for entitlement in entitlements:
        key = (entitlement.buyer_org_id, entitlement.provider_org_id, entitlement.market_id)
        by_pair[key].append(entitlement)
    return {key: _in_draw_order(pair) for key, pair in by_pair.items()}


class _Draws:
    """Draws not written yet, as the columns their rows are inserted from: the insert takes the
    token columns as they are, where a tuple a draw had to be taken apart column by column."""

    def __init__(self):
        self.records: list[UsageRecord] = []
        self.entitlements: list[Entitlement] = []
        self.tokens: list[int] = []
        self.covered_tokens: list[int] = []

    def add(self, record: UsageRecord, entitlement: Entitlement, tokens: int, covered: int):
        self.records.append(record)
        self.entitlements.append(entitlement)
        self.tokens.append(tokens)
        self.covered_tokens.append(covered)


def _draw(record: UsageRecord, entitlements: Sequence[Entitlement], draws: _Draws) -> int:
    """Draw `record` down against its pair's `entitlements` (in draw-down order); return its
    billable tokens left uncovered.

    Only entitlements bought before the usage ended and expiring after it started are drawn.
    An entitlement counts in its own contract weights. When they equal the market's (the usual
    case) a draw of n tokens covers n of the record's billable tokens; otherwise the record's
    uncovered share is converted, rounding down what the entitlement is charged. Each draw is
    added to `draws` with its tokens and covered tokens.
    """
    billable = left = record.billable_tokens
    weights = (record.output_weight_bp, record.cache_weight_bp)
    for entitlement in entitlements:
        if left == 0:
            break
        tokens_left = entitlement.tokens_bought - entitlement.tokens_used
        if (
            tokens_left <= 0
            or entitlement.expires_at <= record.started_at
            or entitlement.created_at > record.ended_at
        ):
            continue
        if (entitlement.output_weight_bp, entitlement.cache_weight_bp) == weights:
            # The same weights count the same tokens: a token drawn is a token covered.
            tokens = covered = min(left, tokens_left)
        else:
            own = billable_tokens(
                input_tokens=record.input_tokens,
                cached_input_tokens=record.cached_input_tokens,
                output_tokens=record.output_tokens,
                output_weight_bp=entitlement.output_weight_bp,
                cache_weight_bp=entitlement.cache_weight_bp,
            )
            need, _ = div_floor(left * own, billable)
            tokens = min(need, tokens_left)
            if tokens == need:
                covered = left
            else:
                covered, _ = div_floor(tokens * billable, own)
        if covered == 0:
            continue
        entitlement.tokens_used += tokens
        draws.add(record, entitlement, tokens, covered)
        left -= covered
    record.entitlement_tokens = billable - left
    return left


def _meters_for_update(pairs: set[tuple[int, int, int]]) -> dict[tuple[int, int, int], PaygMeter]:
    """The pairs' pay-as-you-go meters, created on first use, locked by ascending id."""
    if not pairs:
        return {}
    PaygMeter.objects.bulk_create(
        [PaygMeter(buyer_org_id=b, provider_org_id=p, market_id=m) for b, p, m in sorted(pairs)],
        ignore_conflicts=True,
    )
    match = Q()
    for buyer_id, provider_id, market_id in pairs:
        match |= Q(buyer_org_id=buyer_id, provider_org_id=provider_id, market_id=market_id)
    return {
        (meter.buyer_org_id, meter.provider_org_id, meter.market_id): meter
        for meter in locks.payg_meters_for_update(match)
    }


def _charge(
    record: UsageRecord,
    tokens: int,
    meter: PaygMeter,
    *,
    price_micro: int,
    fee_bp: int,
    available_micro: int,
) -> None:
    """Price `tokens` pay-as-you-go on the meter; fund what `available_micro` covers."""
    numerator = meter.remainder + tokens * price_micro
    cost_micro, remainder = div_floor(numerator, TOKENS_PER_PRICE_UNIT)
    funded = min(
        tokens,
        payg_tokens_covered(
            available_micro=available_micro, price_micro=price_micro, remainder=meter.remainder
        ),
    )
    charged, _ = div_floor(meter.remainder + funded * price_micro, TOKENS_PER_PRICE_UNIT)
    meter.remainder = remainder
    meter.tokens += tokens
    meter.charged_micro += charged
    meter.unfunded_tokens += tokens - funded
    meter.unfunded_micro += cost_micro - charged
    record.payg_tokens = funded
    record.payg_price_micro = price_micro
    record.payg_cost_micro = charged
    record.payg_fee_micro = bp_floor(charged, fee_bp)
    record.unfunded_tokens = tokens - funded
    record.unfunded_micro = cost_micro - charged


def usage_meter(*, records: Sequence[UsageRecord], plan: _DrawPlan | None = None) -> None:
    """Draw stored primary records down and charge the rest pay-as-you-go. Inside a txn.

    The records must be saved, primary and not metered yet (`metered_at` empty); ingestion
    calls this once for the records it wrote, so a retry never meters twice. Locks
    entitlements, then the pay-as-you-go meters, then ledger accounts, each by ascending id.
    With `plan` (ingestion's draw of these records, written with them) the records come
    metered: if the locked entitlements are as the plan read them its draws are booked,
    otherwise the records are metered again here and their outcome rewritten.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("usage_meter must run inside the caller's transaction")
    if plan is None and any(
        not record.is_primary or record.metered_at is not None for record in records
    ):
        raise ValueError("only primary records not metered yet are metered")
    if not records:
        return
    if plan is not None and not plan.covers(records):
        plan.discard()
        plan = None
    pairs = plan.pairs if plan is not None else set(map(_PAIR, records))
    locked = _entitlements_for_update(pairs)
    if plan is not None:
        if plan.holds(locked):
            _draws_book(plan.draws)
            return
        plan.discard()
    metered_at = timezone.now()
    for record in records:
        record.metered_at = metered_at
    records = sorted(records, key=lambda r: (r.ended_at, r.request_id, r.id))
    by_pair = _by_pair(locked)
    draws = _Draws()
    uncovered = {}
    for record in records:
        key = (record.buyer_org_id, record.provider_org_id, record.market_id)
        left = _draw(record, by_pair.get(key, ()), draws)
        if left:
            uncovered[record.id] = left

    specs: list[TransactionSpec] = []
    if uncovered:
        payg = [record for record in records if record.id in uncovered]
        meters = _meters_for_update(
            {(r.buyer_org_id, r.provider_org_id, r.market_id) for r in payg}
        )
        accounts = org_accounts_bulk(org_ids={r.buyer_org_id for r in payg}, kinds=[Kind.AVAILABLE])
        accounts |= org_accounts_bulk(
            org_ids={r.provider_org_id for r in payg}, kinds=[Kind.EARNED]
        )
        fees_id = platform_account(kind=Kind.FEES).id
        locked = locks.ledger_accounts_for_update([a.id for a in accounts.values()] + [fees_id])
        available = {
            org_id: locked[account.id].balance_micro
            for (org_id, kind), account in accounts.items()
            if kind == Kind.AVAILABLE
        }
        market_model = apps.get_model("marketplace", "Market")
        markets = market_model.objects.in_bulk({record.market_id for record in payg})
        prices = {market_id: reference_price_get(market=m) for market_id, m in markets.items()}
        for record in payg:
            _charge(
                record,
                uncovered[record.id],
                meters[(record.buyer_org_id, record.provider_org_id, record.market_id)],
                price_micro=prices[record.market_id].price_micro,
                fee_bp=markets[record.market_id].maker_fee_bp,
                available_micro=available[record.buyer_org_id],
            )
            available[record.buyer_org_id] -= record.payg_cost_micro
            if record.payg_cost_micro:
                earned = accounts[(record.provider_org_id, Kind.EARNED)]
                specs.append(
                    TransactionSpec(
                        kind=LedgerTransaction.Kind.PAYG,
                        reference=f"usage:{record.id}",
                        idempotency_key=f"usage:payg:{record.id}",
                        postings=[
                            Posting(
                                accounts[(record.buyer_org_id, Kind.AVAILABLE)].id,
                                -record.payg_cost_micro,
                            ),
                            Posting(earned.id, record.payg_cost_micro - record.payg_fee_micro),
                            Posting(fees_id, record.payg_fee_micro),
                        ],
                    )
                )
        changed_meters = list(meters.values())
        rows_update(
            PaygMeter,
            ids=[meter.id for meter in changed_meters],
            columns={
                name: [getattr(meter, name) for meter in changed_meters]
                for name in (
                    "tokens",
                    "remainder",
                    "charged_micro",
                    "unfunded_tokens",
                    "unfunded_micro",
                )
            },
        )
    ledger_post_batch(specs)
    _draws_book(draws)
    outcome = (
        "metered_at",
        "entitlement_tokens",
        "payg_tokens",
        "payg_price_micro",
        "payg_cost_micro",
        "payg_fee_micro",
        "unfunded_tokens",
        "unfunded_micro",
    )
    rows_update(
        UsageRecord,
        ids=[record.id for record in records],
        columns={name: [getattr(record, name) for record in records] for name in outcome},
    )


def _draws_book(draws: _Draws) -> None:
    """Write the draws and the entitlements' new tokens_used (the entitlements locked)."""
    drawn = {entitlement.id: entitlement for entitlement in draws.entitlements}
    hours: dict[datetime, datetime] = {}  # the records of a batch mostly end in one hour
    for record in draws.records:
        if record.ended_at not in hours:
            hours[record.ended_at] = record.ended_hour
    rows_update(
        Entitlement,
        ids=list(drawn),
        columns={"tokens_used": [entitlement.tokens_used for entitlement in drawn.values()]},
    )
    rows_insert(
        UsageDraw,
        columns={
            "usage_record_id": [record.id for record in draws.records],
            "entitlement_id": [entitlement.id for entitlement in draws.entitlements],
            "tokens": draws.tokens,
            "covered_tokens": draws.covered_tokens,
            "hour": [hours[record.ended_at] for record in draws.records],
        },
    )


def entitlement_deliver(*, entitlement_id: int) -> LedgerTransaction | None:
    """Pay the provider for the entitlement's tokens used so far. Inside the caller's txn.

    Cumulative rounding: what is due is floor(tokens_used x price / 10^6) less what was charged,
    and the provider's fee is the same difference of floor(charged x fee). Moves the due amount
    from the buyer's escrow to the provider's earnings (less the fee, to the platform). An
    entitlement whose every token is used and paid for is marked exhausted. Locks the
    entitlement, then the ledger accounts. Safe to call again: nothing more is due.
    """
    entitlement = locks.row_for_update("settlement.Entitlement", entitlement_id)
    if entitlement is None or entitlement.status != Entitlement.Status.OPEN:
        return None
    cost_so_far = min(
        entitlement.value_micro,
        cost_floor_micro(tokens=entitlement.tokens_used, price_micro_per_m=entitlement.price_micro),
    )
    due_micro = cost_so_far - entitlement.charged_micro
    ledger_transaction = None
    if due_micro > 0:
        fee_micro = bp_floor(cost_so_far, entitlement.provider_fee_bp) - bp_floor(
            entitlement.charged_micro, entitlement.provider_fee_bp
        )
        accounts = org_accounts_bulk(org_ids={entitlement.buyer_org_id}, kinds=[Kind.ESCROW])
        accounts |= org_accounts_bulk(org_ids={entitlement.provider_org_id}, kinds=[Kind.EARNED])
        ledger_transaction = ledger_post(
            kind=LedgerTransaction.Kind.DELIVERY,
            postings=[
                Posting(accounts[(entitlement.buyer_org_id, Kind.ESCROW)].id, -due_micro),
                Posting(
                    accounts[(entitlement.provider_org_id, Kind.EARNED)].id, due_micro - fee_micro
                ),
                Posting(platform_account(kind=Kind.FEES).id, fee_micro),
            ],
            reference=f"entitlement:{entitlement.id}",
            # The running total charged is unique per entitlement, so each delivery has its key.
            idempotency_key=f"delivery:{entitlement.id}:{cost_so_far}",
        )
        entitlement.charged_micro = cost_so_far
    if (
        entitlement.tokens_used == entitlement.tokens_bought
        and entitlement.charged_micro == entitlement.value_micro
    ):
        entitlement.status = Entitlement.Status.EXHAUSTED
        entitlement.closed_at = timezone.now()
    entitlement.save(update_fields=["charged_micro", "status", "closed_at"])
    return ledger_transaction
