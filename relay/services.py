"""The relay's writes: admit a request (limits and the worst case set aside), fund a fallback,
and settle (charge the actual cost once, give back the rest, record the request).

Money: a pay-as-you-go request holds its worst case from the buyer's available balance under
`relay:<request id>` (settlement holds); an entitlement-backed one reserves the worst case in
billable tokens on the entitlement (EntitlementReservation). Settling records the actual cost and
releases the rest of the hold, or everything when the request failed or came back empty; the
cost stays held until relay.captures books it, in a batch, into the provider's earnings (less
the market's maker fee, to the platform's fees). Each of these runs in one transaction of its
own; no provider is called inside one.
"""

import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from types import SimpleNamespace

from django.db import transaction
from django.db.models import F, Sum
from django.utils import timezone
from rest_framework import exceptions

from accounts.authentication import ApiKeyAuthentication
from accounts.keys import key_digest
from accounts.models import Scope
from core import locks
from core.errors import InsufficientFunds as LedgerInsufficientFunds
from core.units import bp_floor, cost_ceil_micro
from relay import limits
from relay.captures import Capture, capture_book, capture_enqueue, captures_accounts_forget
from relay.errors import (
    BadRequest,
    BudgetExceeded,
    InsufficientFunds,
    InvalidApiKey,
    MissingScope,
    NoHealthyProvider,
    RateLimited,
)
from relay.models import EntitlementReservation, KeyCounter, KeyPolicy, RelayRequest
from relay.pricing import (
    Tokens,
    Weights,
    cost_micro,
    worst_billable_tokens,
    worst_input_tokens,
)
from relay.selectors import (
    Candidate,
    TtlCache,
    candidate_list,
    market_weights,
    route_cache_clear,
    route_get,
)
from settlement.models import Entitlement, Hold, UsageDraw, UsageRecord, relay_hold_reference
from settlement.services import hold_place, hold_release


@dataclass
class Funding:
    """How the attempt in flight is paid for: one entitlement's tokens, or the held balance."""

    entitlement_id: int | None
    price_micro: int
    weights: Weights
    provider_fee_bp: int
    worst_micro: int
    reserved_tokens: int = 0


@dataclass
class Admission:
    """A request the relay accepted: plain data handed between the event loop and DB threads."""

    request_id: str
    org_id: int
    api_key_id: int
    market_id: int
    reference_price_micro: int  # pay-as-you-go, by settlement's rule (Route.payg_price_micro)
    market_weights: Weights
    maker_fee_bp: int
    model: str
    kind: str
    is_streamed: bool
    worst_input_tokens: int
    max_output_tokens: int
    candidates: list[Candidate]
    funding: Funding | None = None
    funded_endpoint_id: int | None = None
    hold_micro: int = 0  # the pay-as-you-go hold, placed at most once per request
    tokens_window: object = None
    tokens_taken: int = 0
    spend_window: object = None
    spend_taken_micro: int = 0
    skipped: list[int] = field(default_factory=list)
    # Admitted by relay.fast_path (one statement on PostgreSQL), which then also settles it.
    is_fast: bool = False
    account_ids: tuple[int, int] | None = None  # the buyer's available and held, when is_fast

    @property
    def hold_reference(self) -> str:
        return relay_hold_reference(self.request_id)


# A key's principal is remembered this long per relay process, so a revoked key may still pass
# for up to AUTH_TTL_S; refusals are never remembered.
AUTH_TTL_S = 5.0
_principals = TtlCache(AUTH_TTL_S)


# A key's limits (not its counters, which are always taken in the database) are remembered as
# long, so an operator's change to a policy applies within AUTH_TTL_S.
_policies = TtlCache(AUTH_TTL_S)


def _policy(api_key_id: int) -> tuple[KeyPolicy | None, str | None]:
    policy = KeyPolicy.objects.select_related("default_region").filter(api_key_id=api_key_id)
    policy = policy.first()
    region = policy.default_region if policy is not None else None
    return policy, region.code if region is not None else None


# A buyer's `available` and `held` account ids (relay.fast_path): they never change once made.
_accounts = TtlCache(3600.0)


def relay_caches_clear() -> None:
    _principals.clear()
    _policies.clear()
    _accounts.clear()
    captures_accounts_forget()
    route_cache_clear()


def relay_authenticate(*, authorization: str):
    """The Principal of a relay API key (accounts' own key check), or InvalidApiKey/MissingScope."""
    if not authorization:
        raise InvalidApiKey()
    return _principals.get(key_digest(authorization), lambda: _authenticate(authorization))


def _authenticate(authorization: str):
    # The accounts check reads only the Authorization header of the request it is given.
    shim = SimpleNamespace(
        headers={"authorization": authorization}, META={"HTTP_AUTHORIZATION": authorization}
    )
    try:
        result = ApiKeyAuthentication().authenticate(shim)
    except exceptions.AuthenticationFailed as error:
        raise InvalidApiKey(str(error.detail)) from None
    if result is None:
        raise InvalidApiKey()
    principal = result[1]
    if not principal.has_scope(Scope.RELAY):
        raise MissingScope()
    return principal


def _max_output_tokens(body: dict, tier_cap: int, kind: str) -> int:
    if kind == RelayRequest.Kind.EMBEDDING:
        return 0
    asked = body.get("max_completion_tokens", body.get("max_tokens"))
    if asked is None:
        return tier_cap
    if not isinstance(asked, int) or isinstance(asked, bool) or asked <= 0:
        raise BadRequest("max_tokens must be a positive integer.", param="max_tokens")
    return min(asked, tier_cap)


def relay_policy(api_key_id: int) -> tuple[KeyPolicy | None, str | None]:
    """The key's relay policy and default region code (cached for AUTH_TTL_S)."""
    return _policies.get(api_key_id, lambda: _policy(api_key_id))


def relay_policy_cached(api_key_id: int):
    """relay_policy if this process still remembers it, else None; no database access."""
    return _policies.peek(api_key_id)


def relay_principal_cached(authorization: str):
    """The Principal this process remembers for the key, else None; no database access."""
    return _principals.peek(key_digest(authorization)) if authorization else None


def policy_has_limits(policy: KeyPolicy | None) -> bool:
    return policy is not None and (
        policy.requests_per_minute is not None
        or policy.tokens_per_minute is not None
        or policy.spend_cap_micro is not None
    )


def admission_new(
    *, principal, body: dict, kind: str, route, request_id: str, candidates: list[Candidate]
) -> Admission:
    """The Admission of a routed request, its worst case counted; writes nothing.

    Sets `max_tokens` in `body` when the buyer left it out: the provider must not write more
    than the worst case held for it.
    """
    market = route.market
    max_output = _max_output_tokens(body, market.tier.max_output_tokens, kind)
    if kind != RelayRequest.Kind.EMBEDDING and body.get("max_tokens") is None:
        body["max_tokens"] = max_output
    if not candidates:
        raise NoHealthyProvider(
            f"No verified provider serves {body['model']!r} in {market.symbol}."
        )
    return Admission(
        request_id=request_id,
        org_id=principal.org.id,
        api_key_id=principal.api_key.id,
        market_id=market.id,
        reference_price_micro=route.payg_price_micro,
        market_weights=market_weights(market),
        maker_fee_bp=market.maker_fee_bp,
        model=body["model"],
        kind=kind,
        is_streamed=bool(body.get("stream")),
        worst_input_tokens=worst_input_tokens(body),
        max_output_tokens=max_output,
        candidates=candidates,
    )


def request_model(body: dict) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` is required.", param="model")
    return model


def insufficient_funds(admission: Admission) -> InsufficientFunds:
    return InsufficientFunds(
        "Neither entitlements nor the available balance cover this request's worst case "
        f"({admission.worst_input_tokens} input and {admission.max_output_tokens} output tokens).",
        param="balance",
    )


@transaction.atomic(durable=True)
def relay_admit(
    *, principal, body: dict, kind: str, region_code: str | None, request_id: str
) -> Admission:
    """Route a request and set its worst case aside; refuses with 402/404/429/503. Own txn.

    Funding comes first and the limits after it, so this takes its row locks in the order the
    PostgreSQL path (relay.fast_path) takes them: entitlement, hold, ledger accounts, counters.
    A refusal rolls everything back.
    """
    model = request_model(body)
    policy, default_region_code = relay_policy(principal.api_key.id)
    route = route_get(model=model, region_code=region_code or default_region_code)
    candidates = candidate_list(buyer_org_id=principal.org.id, route=route)
    admission = admission_new(
        principal=principal,
        body=body,
        kind=kind,
        route=route,
        request_id=request_id,
        candidates=candidates,
    )
    for candidate in candidates:
        if _fund(admission, candidate):
            break
        admission.skipped.append(candidate.endpoint_id)
    else:
        raise insufficient_funds(admission)
    if policy is not None:
        _take_limits(admission, policy)
    return admission


def _take_limits(admission: Admission, policy: KeyPolicy) -> None:
    now = timezone.now()
    key = admission.api_key_id
    if policy.requests_per_minute is not None and not limits.counter_take(
        api_key_id=key,
        kind=KeyCounter.Kind.REQUESTS,
        window_start=limits.minute_start(now),
        amount=1,
        limit=policy.requests_per_minute,
    ):
        raise RateLimited(
            f"This key may send {policy.requests_per_minute} requests a minute.",
            param="requests_per_minute",
            retry_after_s=limits.seconds_to_next_minute(now),
        )
    if policy.tokens_per_minute is not None:
        tokens = admission.worst_input_tokens + admission.max_output_tokens
        window = limits.minute_start(now)
        if not limits.counter_take(
            api_key_id=key,
            kind=KeyCounter.Kind.TOKENS,
            window_start=window,
            amount=tokens,
            limit=policy.tokens_per_minute,
        ):
            raise RateLimited(
                f"This key may use {policy.tokens_per_minute} tokens a minute; this request "
                f"may use {tokens}.",
                param="tokens_per_minute",
                retry_after_s=limits.seconds_to_next_minute(now),
            )
        admission.tokens_window, admission.tokens_taken = window, tokens
    if policy.spend_cap_micro is not None:
        worst = _worst_spend_micro(admission)
        window = limits.spend_window_start(policy.spend_window, now)
        if not limits.counter_take(
            api_key_id=key,
            kind=KeyCounter.Kind.SPEND,
            window_start=window,
            amount=worst,
            limit=policy.spend_cap_micro,
        ):
            raise BudgetExceeded(
                f"This key's {policy.spend_window} spend cap does not cover this request's "
                "worst case.",
                param=f"spend_cap_{policy.spend_window}",
            )
        admission.spend_window, admission.spend_taken_micro = window, worst


def _worst_spend_micro(admission: Admission) -> int:
    """The most this request can cost, whichever candidate serves it."""
    entitlement_ids = [i for c in admission.candidates for i in c.entitlement_ids]
    terms = [(admission.reference_price_micro, admission.market_weights)] + [
        (price, Weights(output_weight_bp=out_bp, cache_weight_bp=cache_bp))
        for price, out_bp, cache_bp in Entitlement.objects.filter(
            id__in=entitlement_ids
        ).values_list("price_micro", "output_weight_bp", "cache_weight_bp")
    ]
    return max(_worst_micro(admission, price, weights) for price, weights in terms)


def _worst_micro(admission: Admission, price_micro: int, weights: Weights) -> int:
    tokens = worst_billable_tokens(
        input_tokens=admission.worst_input_tokens,
        max_output_tokens=admission.max_output_tokens,
        weights=weights,
    )
    return cost_ceil_micro(tokens=tokens, price_micro_per_m=price_micro)


def _fund(admission: Admission, candidate: Candidate) -> bool:
    """Pay for an attempt at `candidate`: its entitlements first, then the held balance. In a txn.

    Locks the entitlement row (before any hold or ledger account, core.locks order).
    """
    for entitlement_id in candidate.entitlement_ids:
        entitlement = locks.row_for_update("settlement.Entitlement", entitlement_id)
        if entitlement is None or entitlement.status != Entitlement.Status.OPEN:
            continue
        weights = Weights(
            output_weight_bp=entitlement.output_weight_bp,
            cache_weight_bp=entitlement.cache_weight_bp,
        )
        worst_tokens = worst_billable_tokens(
            input_tokens=admission.worst_input_tokens,
            max_output_tokens=admission.max_output_tokens,
            weights=weights,
        )
        reserved = EntitlementReservation.objects.filter(entitlement=entitlement).aggregate(
            tokens=Sum("tokens")
        )["tokens"]
        if (reserved or 0) + worst_tokens > entitlement.tokens_left:
            continue
        EntitlementReservation.objects.create(
            entitlement=entitlement, request_id=admission.request_id, tokens=worst_tokens
        )
        admission.funding = Funding(
            entitlement_id=entitlement.id,
            price_micro=entitlement.price_micro,
            weights=weights,
            provider_fee_bp=entitlement.provider_fee_bp,
            worst_micro=_worst_micro(admission, entitlement.price_micro, weights),
            reserved_tokens=worst_tokens,
        )
        admission.funded_endpoint_id = candidate.endpoint_id
        return True
    worst = _worst_micro(admission, admission.reference_price_micro, admission.market_weights)
    if admission.hold_micro == 0:
        if worst == 0:
            return False
        try:
            with transaction.atomic():  # a refused hold must not spoil the outer transaction
                hold_place(
                    org_id=admission.org_id, amount_micro=worst, reference=admission.hold_reference
                )
        except LedgerInsufficientFunds:
            return False
        admission.hold_micro = worst
    admission.funding = Funding(
        entitlement_id=None,
        price_micro=admission.reference_price_micro,
        weights=admission.market_weights,
        provider_fee_bp=admission.maker_fee_bp,
        worst_micro=worst,
    )
    admission.funded_endpoint_id = candidate.endpoint_id
    return True


def _unreserve(admission: Admission) -> None:
    funding = admission.funding
    if funding is not None and funding.entitlement_id is not None and funding.reserved_tokens:
        EntitlementReservation.objects.filter(request_id=admission.request_id).delete()
        funding.reserved_tokens = 0


@transaction.atomic(durable=True)
def relay_fund(*, admission: Admission, candidate: Candidate) -> bool:
    """Pay for a fallback attempt at `candidate`, giving back the last attempt's reservation."""
    funding = admission.funding
    if funding is not None and funding.entitlement_id is None and not candidate.entitlement_ids:
        admission.funded_endpoint_id = candidate.endpoint_id
        return True  # the pay-as-you-go hold covers every pay-as-you-go candidate
    _unreserve(admission)
    admission.funding = None
    return _fund(admission, candidate)


@dataclass
class Outcome:
    status: str
    tokens: Tokens = field(default_factory=Tokens)
    is_estimated: bool = False
    endpoint_id: int | None = None
    provider_org_id: int | None = None
    attempts: int = 1
    ttft_ms: int | None = None
    duration_ms: int = 0


@transaction.atomic(durable=True)
def relay_settle(*, admission: Admission, outcome: Outcome) -> RelayRequest:
    """Charge the actual cost once (capped at the worst case held), give back the rest. Own txn.

    A pay-as-you-go cost stays held until relay.captures books it (queued once this commits).
    The usage record is written after the entitlement is locked, unlike ingestion's order
    (record keys first, settlement.services.usage): no other transaction takes its keys, since a
    provider's report of the request is a check record under its own (is_relay_request_id).
    """
    funding = admission.funding
    cost = 0
    if outcome.status == RelayRequest.Status.OK and funding is not None:
        cost = min(
            funding.worst_micro,
            cost_micro(
                tokens=outcome.tokens,
                weights=funding.weights,
                price_micro_per_m=funding.price_micro,
            ),
        )
    entitlement_id = funding.entitlement_id if funding is not None else None
    is_drawn = False
    if entitlement_id is not None:
        locks.row_for_update("settlement.Entitlement", entitlement_id)
        _unreserve(admission)
        if cost:
            is_drawn = _draw_entitlement(admission, funding, outcome, cost)
    is_capture = bool(cost and entitlement_id is None)
    if admission.hold_micro:
        # The cost stays held under the request's hold: the buyer can spend it on nothing else,
        # and relay.captures books it to the provider in a batch (see there for why).
        excess = admission.hold_micro - (cost if is_capture else 0)
        if excess:
            hold_release(reference=admission.hold_reference, amount_micro=excess)
    _give_back_limits(admission, outcome, cost)
    if is_capture:
        capture = Capture(
            hold_reference=admission.hold_reference,
            provider_org_id=outcome.provider_org_id,
            cost_micro=cost,
            provider_fee_bp=funding.provider_fee_bp,
        )
        transaction.on_commit(lambda: capture_enqueue(capture))
    if cost:
        _record_usage(admission, funding, outcome, cost=cost, is_drawn=is_drawn)
    request = relay_request(admission, funding, outcome, cost=cost, entitlement_id=entitlement_id)
    request.save(force_insert=True)
    return request


def _draw_entitlement(admission: Admission, funding: Funding, outcome: Outcome, cost: int) -> bool:
    """Count the tokens against the entitlement; settlement moves escrow to the provider later.

    The reservation made at admission covers the worst case, so the draw fits; False (nothing
    drawn, the usage recorded as unfunded) only if the entitlement changed under it anyway.
    """
    billable = outcome.tokens.billable(funding.weights)
    return bool(
        Entitlement.objects.filter(
            pk=funding.entitlement_id, tokens_used__lte=F("tokens_bought") - billable
        ).update(tokens_used=F("tokens_used") + billable)
    )


def relay_request(
    admission: Admission, funding: Funding | None, outcome: Outcome, *, cost: int, entitlement_id
) -> RelayRequest:
    """The RelayRequest row of a settled request, unsaved."""
    return RelayRequest(
        request_id=admission.request_id,
        api_key_id=admission.api_key_id,
        buyer_org_id=admission.org_id,
        market_id=admission.market_id,
        endpoint_id=outcome.endpoint_id,
        provider_org_id=outcome.provider_org_id,
        entitlement_id=entitlement_id,
        model=admission.model,
        kind=admission.kind,
        status=outcome.status,
        is_streamed=admission.is_streamed,
        is_estimated=outcome.is_estimated,
        input_tokens=outcome.tokens.input_tokens,
        cached_input_tokens=outcome.tokens.cached_input_tokens,
        output_tokens=outcome.tokens.output_tokens,
        billable_tokens=outcome.tokens.billable(funding.weights) if funding else 0,
        price_micro=funding.price_micro if funding else 0,
        held_micro=funding.worst_micro if funding else 0,
        cost_micro=cost,
        attempts=outcome.attempts,
        ttft_ms=outcome.ttft_ms,
        duration_ms=outcome.duration_ms,
    )


def relay_usage_record(admission, outcome, *, ended_at) -> UsageRecord:
    """The relay's usage record of a served request, unsaved, before its funding columns."""
    return UsageRecord(
        source=UsageRecord.Source.RELAY,
        source_org=None,
        request_id=admission.request_id,
        batch_id=uuid.uuid4(),
        market_id=admission.market_id,
        buyer_org_id=admission.org_id,
        provider_org_id=outcome.provider_org_id,
        model=admission.model,
        input_tokens=outcome.tokens.input_tokens,
        cached_input_tokens=outcome.tokens.cached_input_tokens,
        output_tokens=outcome.tokens.output_tokens,
        billable_tokens=outcome.tokens.billable(admission.market_weights),
        output_weight_bp=admission.market_weights.output_weight_bp,
        cache_weight_bp=admission.market_weights.cache_weight_bp,
        is_estimated=outcome.is_estimated,
        is_primary=True,
        started_at=ended_at - timedelta(milliseconds=outcome.duration_ms),
        ended_at=ended_at,
        metered_at=ended_at,
    )


def _record_usage(
    admission: Admission, funding: Funding, outcome: Outcome, *, cost: int, is_drawn: bool
) -> None:
    """Write the relay's usage record, the primary meter of this request, and its draw.

    Reconciliation compares it with what the provider and the buyer report, and the settlement
    run pays the provider for the hour's draws from it (settlement.services.settlement_runs).
    The money already moved at settle: nothing here posts to the ledger.
    """
    billable = outcome.tokens.billable(admission.market_weights)
    if billable <= 0:
        return
    record = relay_usage_record(admission, outcome, ended_at=timezone.now())
    if funding.entitlement_id is None:
        record.payg_tokens = billable
        record.payg_price_micro = funding.price_micro
        record.payg_cost_micro = cost
        record.payg_fee_micro = bp_floor(cost, funding.provider_fee_bp)
    elif is_drawn:
        record.entitlement_tokens = billable
    else:
        record.unfunded_tokens, record.unfunded_micro = billable, cost
    record.save()
    if funding.entitlement_id is not None and is_drawn:
        UsageDraw.objects.create(
            usage_record=record,
            entitlement_id=funding.entitlement_id,
            tokens=outcome.tokens.billable(funding.weights),
            covered_tokens=billable,
            hour=record.ended_hour,
        )


def _give_back_limits(admission: Admission, outcome: Outcome, cost: int) -> None:
    if admission.tokens_taken:
        limits.counter_give_back(
            api_key_id=admission.api_key_id,
            kind=KeyCounter.Kind.TOKENS,
            window_start=admission.tokens_window,
            amount=admission.tokens_taken - min(outcome.tokens.total, admission.tokens_taken),
        )
    if admission.spend_taken_micro:
        limits.counter_give_back(
            api_key_id=admission.api_key_id,
            kind=KeyCounter.Kind.SPEND,
            window_start=admission.spend_window,
            amount=admission.spend_taken_micro - min(cost, admission.spend_taken_micro),
        )


# Longer than any request may take (streams included), so only what a dead process left behind
# is swept.
STALE_AFTER = timedelta(hours=1)


def relay_stale_release(*, older_than: timedelta = STALE_AFTER) -> int:
    """Settle what relay processes that died mid-request left set aside; returns the count.

    A hold whose request was settled (its RelayRequest charged a pay-as-you-go cost) still
    holds that cost: it is captured for the provider, as the dead process would have, at the
    market's maker fee. Every other stale hold is released. Each hold in its own transaction (a
    hold is its own unit of money); the reservations are deleted in one statement. Safe to run
    twice, and beside a live process's flush: a capture happens once, a released hold is closed.
    """
    cutoff = timezone.now() - older_than
    swept, _ = EntitlementReservation.objects.filter(created_at__lt=cutoff).delete()
    stale = list(
        Hold.objects.filter(
            reference__startswith="relay:", status=Hold.Status.OPEN, created_at__lt=cutoff
        ).values_list("reference", flat=True)
    )
    charged = {
        record.request_id: record
        for record in RelayRequest.objects.filter(
            request_id__in=[reference.removeprefix("relay:") for reference in stale],
            status=RelayRequest.Status.OK,
            entitlement__isnull=True,
            provider_org__isnull=False,
            cost_micro__gt=0,
        ).select_related("market")
    }
    for reference in stale:
        with transaction.atomic(durable=True):
            record = charged.get(reference.removeprefix("relay:"))
            if record is not None:
                capture_book(
                    Capture(
                        hold_reference=reference,
                        provider_org_id=record.provider_org_id,
                        cost_micro=record.cost_micro,
                        provider_fee_bp=record.market.maker_fee_bp,
                    )
                )
            hold_release(reference=reference)
        swept += 1
    return swept
