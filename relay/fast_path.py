"""Admit and settle a pay-as-you-go request in one PostgreSQL statement each.

The relay's ORM path (relay.services) takes about 8 statements to admit a request and 8 to settle
it, each a round trip from a worker thread, and spends more of the relay's CPU building and
reading them than on anything else. For the request most buyers send (a key without limits,
paid from the balance) this module does the same moves in one statement each, sent from the
event loop (relay.connections):

- admit: checks the buyer holds no usable entitlement with the route's providers (if it does,
  nothing is written and the ORM path admits the request, reservations and all), locks the
  buyer's `available` and `held` accounts, and if `available` covers the worst case writes the
  hold's ledger transaction, its two entries, the new balances and the Hold row;
- settle: locks the hold (only while nothing was released or captured from it, so a repeated
  settle writes nothing), releases the excess of the worst case over the cost to `available`
  (ledger transaction, entries, balances, the hold's new state), and writes the relay's usage
  record and the RelayRequest.

Both commit as every other commit does, waiting for the WAL to reach the disk: a request is
sent to a provider only once its hold is durable, so a crash of the database after dispatch
cannot lose the hold that pays for what the provider served.

These are the moves of settlement's `hold_place` and `hold_release` (one `ledger_post` each,
under the same idempotency keys) with the same rules as ledger.py's one-statement post: locks
in ascending id, balances read under the lock, nothing written unless every rule holds. The
ledger guards (the deferred trigger that every transaction balances, the non-negative balance
checks) apply to them as to any posting, and `ledger_check` covers them. The cost stays held
and relay.captures books it, as for the ORM path. An autocommit statement is its own
transaction, so each commits whole or not at all.

Usage records and RelayRequests are inserted with every concrete column of their models, the
values prepared by the models' own fields (defaults included), so a field added to either
needs no change here.

psycopg parses a statement's placeholders once and caches the parse, but only for a text of
up to 4,096 characters; past it, every execution parses the whole text again. Both statements
stay under it (a test checks): they are minified, and the inserts name no columns (below).
"""

from dataclasses import dataclass

from django.utils import timezone

from core.units import bp_floor
from relay.models import RelayRequest
from relay.pricing import Tokens, cost_micro
from relay.selectors import candidates_order, route_cached, route_get
from relay.services import (
    Admission,
    Funding,
    Outcome,
    _accounts,
    _worst_micro,
    admission_new,
    insufficient_funds,
    policy_has_limits,
    relay_authenticate,
    relay_policy,
    relay_policy_cached,
    relay_principal_cached,
    relay_request,
    relay_usage_record,
)
from settlement.models import (
    Entitlement,
    Hold,
    LedgerAccount,
    LedgerTransaction,
    UsageRecord,
)
from settlement.services.holds import hold_insert_cte
from settlement.services.ledger import (
    ledger_move_ctes,
    model_insert_fields,
    org_accounts,
    row_json,
    sql_minified,
)

Kind = LedgerAccount.Kind


@dataclass(frozen=True)
class Inputs:
    """What admitting a request needs besides its body: from this process's caches, or the ORM."""

    principal: object
    policy: object
    route: object
    available_id: int
    held_id: int


def inputs_cached(*, authorization: str, model: str, region_code: str | None) -> Inputs | None:
    """The admission's inputs if this process remembers them all, else None; no database."""
    principal = relay_principal_cached(authorization)
    if principal is None:
        return None
    policy = relay_policy_cached(principal.api_key.id)
    accounts = _accounts.peek(principal.org.id)
    if policy is None or accounts is None:
        return None
    route = route_cached(model=model, region_code=region_code or policy[1])
    if route is None:
        return None
    return Inputs(principal, policy[0], route, *accounts)


def inputs_load(*, authorization: str, model: str, region_code: str | None) -> Inputs:
    """The admission's inputs through the ORM (a worker thread), remembered for the next ones.

    Raises as the ORM path does for a bad key, a missing scope or an unknown model.
    """
    principal = relay_authenticate(authorization=authorization)
    policy, default_region_code = relay_policy(principal.api_key.id)
    accounts = _accounts.get(principal.org.id, lambda: _account_ids(principal.org.id))
    route = route_get(model=model, region_code=region_code or default_region_code)
    return Inputs(principal, policy, route, *accounts)


def _account_ids(org_id: int) -> tuple[int, int]:
    accounts = org_accounts(org_id=org_id, kinds=[Kind.AVAILABLE, Kind.HELD])
    return accounts[Kind.AVAILABLE].id, accounts[Kind.HELD].id


def is_eligible(inputs: Inputs) -> bool:
    """Keys with limits take the ORM path: their counters are taken there."""
    return not policy_has_limits(inputs.policy)


_HOLDS = Hold._meta.db_table
_ENTITLEMENTS = Entitlement._meta.db_table


# Admit: no usable entitlement with these providers, then the hold of the worst case.
_ADMIT = f"""
    WITH entitled AS (
        SELECT EXISTS (
            SELECT FROM {_ENTITLEMENTS} AS entitlement
             WHERE entitlement.buyer_org_id = %(org)s::bigint
               AND entitlement.market_id = %(market)s::bigint
               AND entitlement.status = %(entitlement_open)s::text
               AND entitlement.provider_org_id = ANY(%(providers)s::bigint[])
               AND entitlement.expires_at > %(now)s::timestamptz
               AND entitlement.tokens_used < entitlement.tokens_bought
        ) AS is_entitled
    ), {ledger_move_ctes(guard="NOT (SELECT is_entitled FROM entitled)")}, {hold_insert_cte()}
    SELECT (SELECT is_entitled FROM entitled), (SELECT id FROM hold), (SELECT count(*) FROM locked)
"""  # noqa: S608 - table names come from our models; every value is a parameter
_ADMIT = sql_minified(_ADMIT)


_statements: dict[str, object] = {}


def _settle_statement():
    """The settle statement (built once: its columns come from the models)."""
    if "settle" not in _statements:
        usage_fields = model_insert_fields(UsageRecord)
        request_fields = model_insert_fields(RelayRequest)
        usage_table, request_table = UsageRecord._meta.db_table, RelayRequest._meta.db_table
        # The inserts take a whole row of their table, in the table's own column order, from
        # the JSON; its id (null there) becomes the identity column's next value (OVERRIDING
        # USER VALUE). So no column list is spelled, twice, in the text.
        sql = f"""
    WITH hold AS MATERIALIZED (
        SELECT held.id, held.amount_micro
          FROM {_HOLDS} AS held
         WHERE held.reference = %(reference)s::text AND held.status = %(open)s::text
           AND held.released_micro = 0 AND held.captured_micro = 0
           FOR UPDATE
    ), {ledger_move_ctes(guard="%(amount)s::bigint > 0 AND EXISTS (SELECT FROM hold)")},
    released AS (
        UPDATE {_HOLDS} AS held
           SET released_micro = %(amount)s::bigint,
               status = CASE WHEN held.amount_micro = %(amount)s::bigint
                             THEN %(closed)s::text ELSE held.status END,
               closed_at = CASE WHEN held.amount_micro = %(amount)s::bigint
                                THEN %(now)s::timestamptz END
          FROM txn
         WHERE held.id = (SELECT id FROM hold)
    ), settled AS (
        SELECT EXISTS (SELECT FROM hold)
               AND (%(amount)s::bigint = 0 OR EXISTS (SELECT FROM txn)) AS is_settled
    ), usage AS (
        INSERT INTO {usage_table} OVERRIDING USER VALUE
        SELECT new_row.* FROM json_populate_record(NULL::{usage_table}, %(usage)s::json) AS new_row
         WHERE %(has_usage)s::boolean AND (SELECT is_settled FROM settled)
    ), request AS (
        INSERT INTO {request_table} OVERRIDING USER VALUE
        SELECT new_row.*
          FROM json_populate_record(NULL::{request_table}, %(request)s::json) AS new_row
         WHERE (SELECT is_settled FROM settled)
        RETURNING id
    )
    SELECT (SELECT id FROM hold), (SELECT id FROM request)
"""  # noqa: S608 - table and column names come from our models; every value is a parameter
        _statements["settle"] = (usage_fields, request_fields, sql_minified(sql))
    return _statements["settle"]


async def relay_admit_fast(
    *, connection, inputs: Inputs, body: dict, kind: str, request_id: str
) -> Admission | None:
    """Admit a pay-as-you-go request in one statement; None when the buyer is entitled here.

    None means nothing was written: the ORM path admits it. Raises InsufficientFunds (402)
    when the balance does not cover the worst case, as the ORM path does.
    """
    route = inputs.route
    candidates = candidates_order(route=route, entitled={})
    admission = admission_new(
        principal=inputs.principal,
        body=body,
        kind=kind,
        route=route,
        request_id=request_id,
        candidates=candidates,
    )
    worst = _worst_micro(admission, admission.reference_price_micro, admission.market_weights)
    if worst == 0:
        raise insufficient_funds(admission)
    now = timezone.now()
    params = {
        "org": admission.org_id,
        "market": admission.market_id,
        "open": Hold.Status.OPEN.value,
        "entitlement_open": Entitlement.Status.OPEN.value,
        "providers": sorted({candidate.provider_org_id for candidate in candidates}),
        "now": now,
        "source": inputs.available_id,
        "destination": inputs.held_id,
        "amount": worst,
        "kind": LedgerTransaction.Kind.HOLD.value,
        "reference": admission.hold_reference,
        "key": f"hold:{admission.hold_reference}",
    }
    cursor = await connection.execute(_ADMIT, params)
    is_entitled, hold_id, accounts_found = await cursor.fetchone()
    if is_entitled:
        return None
    if accounts_found != 2:
        # The remembered account ids are not this buyer's (only a test's emptied database
        # does that): forget them; the ORM path admits this request.
        _accounts.clear()
        return None
    if hold_id is None:
        raise insufficient_funds(admission)
    admission.hold_micro = worst
    admission.funding = Funding(
        entitlement_id=None,
        price_micro=admission.reference_price_micro,
        weights=admission.market_weights,
        provider_fee_bp=admission.maker_fee_bp,
        worst_micro=worst,
    )
    admission.funded_endpoint_id = candidates[0].endpoint_id
    admission.is_fast = True
    admission.account_ids = (inputs.available_id, inputs.held_id)
    return admission


class SettleFailed(Exception):
    """The fast settle found its hold already released or captured: nothing was written."""


async def relay_settle_fast(*, connection, admission: Admission, outcome: Outcome) -> int | None:
    """relay_settle for an admission of relay_admit_fast, in one statement; returns the cost.

    The cost stays held for relay.captures, which the caller queues once this returns. None:
    nothing was written, and relay_settle (the ORM path) is to settle it. Raises SettleFailed,
    writing nothing, when the hold is no longer open (settled already).
    """
    funding = admission.funding
    cost = 0
    if outcome.status == RelayRequest.Status.OK:
        cost = min(funding.worst_micro, _cost(outcome.tokens, funding))
    now = timezone.now()
    usage_fields, request_fields, sql = _settle_statement()
    billable = outcome.tokens.billable(admission.market_weights)
    has_usage = bool(cost) and billable > 0
    usage = relay_usage_record(admission, outcome, ended_at=now)
    usage.payg_tokens = billable
    usage.payg_price_micro = funding.price_micro
    usage.payg_cost_micro = cost
    usage.payg_fee_micro = bp_floor(cost, funding.provider_fee_bp)
    request = relay_request(admission, funding, outcome, cost=cost, entitlement_id=None)
    request.created_at = now
    excess = admission.hold_micro - cost
    available_id, held_id = admission.account_ids
    params = {
        "org": admission.org_id,
        "reference": admission.hold_reference,
        "open": Hold.Status.OPEN.value,
        "closed": Hold.Status.CLOSED.value,
        "now": now,
        # The excess goes back from held to available, under hold_release's key.
        "source": held_id,
        "destination": available_id,
        "amount": excess,
        "kind": LedgerTransaction.Kind.HOLD_RELEASE.value,
        "key": f"release:{admission.hold_reference}:{excess}",
        "has_usage": has_usage,
        "usage": row_json(usage_fields, usage) if has_usage else "{}",
        "request": row_json(request_fields, request),
    }
    cursor = await connection.execute(sql, params)
    hold_id, request_id = await cursor.fetchone()
    if hold_id is None:
        raise SettleFailed(f"{admission.hold_reference} was not settled: its hold is not open")
    if request_id is None:
        return None  # nothing written (the accounts were not as remembered): the ORM settles
    return cost


def _cost(tokens: Tokens, funding: Funding) -> int:
    return cost_micro(tokens=tokens, weights=funding.weights, price_micro_per_m=funding.price_micro)
