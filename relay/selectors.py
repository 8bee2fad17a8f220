"""The relay's reads: which market a model and region name, and whom to send a request to."""

import threading
import time
from dataclasses import dataclass, field

from django.db.models import F, Min
from django.utils import timezone

from marketplace.models import Market, Order, ProviderEndpoint
from relay.errors import ModelNotFound, RegionRequired
from relay.health import Health, health_for
from relay.pricing import Weights
from settlement.models import Entitlement
from settlement.selectors import reference_price_get


@dataclass
class Candidate:
    """One endpoint to try, with its provider's entitlements to draw first (earliest expiry)."""

    endpoint_id: int
    base_url: str
    provider_org_id: int
    entitlement_ids: list[int] = field(default_factory=list)
    health_class: int = 0


def market_for_model(*, model: str, region_code: str | None) -> Market:
    """The open market whose tier admits `model`, in the region asked for (or the only one)."""
    markets = [
        market
        for market in Market.objects.select_related("tier", "region").filter(
            status=Market.Status.OPEN
        )
        if market.tier.admits(model)
    ]
    if not markets:
        raise ModelNotFound(f"The model {model!r} is not traded here.", param="model")
    if region_code:
        for market in markets:
            if market.region.code == region_code:
                return market
        raise ModelNotFound(
            f"The model {model!r} is not traded in region {region_code!r}.", param="X-Region"
        )
    if len(markets) == 1:
        return markets[0]
    raise RegionRequired(param="X-Region")


def market_weights(market: Market) -> Weights:
    return Weights(output_weight_bp=market.output_weight_bp, cache_weight_bp=market.cache_weight_bp)


@dataclass(frozen=True)
class Route:
    """What every buyer's request for a model in a region shares: the market, the endpoints
    serving the model there, the providers' best asks, the endpoints' health, and the market's
    pay-as-you-go reference price (settlement's rule: recent VWAP, else best ask, else list)."""

    market: Market
    endpoints: list[ProviderEndpoint]
    best_ask: dict[int, int]
    health: dict[int, Health]
    payg_price_micro: int


_MISSING = object()


class TtlCache:
    """A few seconds of memory per relay process for what changes rarely and is read always."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self.entries: dict = {}
        self.lock = threading.Lock()
        # One computation per key at a time: when an entry runs out, the requests in flight
        # wait for the first one's answer instead of all asking the database at once.
        self.computing: dict = {}

    def get(self, key, compute):
        value = self.peek(key, _MISSING)
        if value is not _MISSING:
            return value
        with self.lock:
            key_lock = self.computing.setdefault(key, threading.Lock())
        with key_lock:
            value = self.peek(key, _MISSING)
            if value is _MISSING:
                value = compute()
                with self.lock:
                    self.entries[key] = (time.monotonic() + self.ttl_s, value)
        return value

    def peek(self, key, default=None):
        """The value remembered for `key` if it is still fresh, else `default`; never computes."""
        with self.lock:
            entry = self.entries.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return entry[1]
        return default

    def clear(self) -> None:
        with self.lock:
            self.entries.clear()


# Markets, endpoints, asks and health may be this stale when routing; money never is (the
# entitlements and the balance are read fresh, under locks, for every request).
ROUTE_TTL_S = 2.0
_routes = TtlCache(ROUTE_TTL_S)


def route_cache_clear() -> None:
    _routes.clear()


def route_get(*, model: str, region_code: str | None) -> Route:
    """The route for `model` in a region (cached for ROUTE_TTL_S); raises like market_for_model."""
    return _routes.get((model, region_code), lambda: _route(model, region_code))


def route_cached(*, model: str, region_code: str | None) -> Route | None:
    """The route if this process still remembers it, else None; no database access."""
    return _routes.peek((model, region_code))


def _route(model: str, region_code: str | None) -> Route:
    market = market_for_model(model=model, region_code=region_code)
    endpoints = [
        endpoint
        for endpoint in ProviderEndpoint.objects.filter(
            market=market, status=ProviderEndpoint.Status.VERIFIED
        ).order_by("id")
        if model in endpoint.models
    ]
    best_ask = dict(
        Order.objects.filter(market=market, side=Order.Side.SELL, status=Order.Status.OPEN)
        .values("org_id")
        .annotate(best=Min("price_micro"))
        .values_list("org_id", "best")
    )
    health = health_for([endpoint.id for endpoint in endpoints]) if endpoints else {}
    return Route(
        market=market,
        endpoints=endpoints,
        best_ask=best_ask,
        health=health,
        payg_price_micro=reference_price_get(market=market).price_micro,
    )


def candidate_list(*, buyer_org_id: int, route: Route) -> list[Candidate]:
    """Endpoints to try, best first.

    First the endpoints of providers the buyer holds unused entitlements with (earliest expiring
    entitlement first), then every other verified endpoint serving the model, for pay-as-you-go,
    cheapest provider first (best ask; providers without one after, oldest endpoint first).
    Endpoints the relay judged degraded move after the normal ones, and failing ones to the end.
    """
    if not route.endpoints:
        return []
    providers = {endpoint.org_id for endpoint in route.endpoints}
    entitlements = (
        Entitlement.objects.filter(
            buyer_org_id=buyer_org_id,
            market=route.market,
            status=Entitlement.Status.OPEN,
            provider_org_id__in=list(providers),
            expires_at__gt=timezone.now(),
            tokens_used__lt=F("tokens_bought"),
        )
        .order_by("expires_at", "id")
        .values_list("id", "provider_org_id")
    )
    entitled: dict[int, list[int]] = {}
    for entitlement_id, provider_org_id in entitlements:
        entitled.setdefault(provider_org_id, []).append(entitlement_id)
    return candidates_order(route=route, entitled=entitled)


def candidates_order(*, route: Route, entitled: dict[int, list[int]]) -> list[Candidate]:
    """candidate_list's order, given each provider's usable entitlements; no database access."""
    best_ask = route.best_ask
    by_provider: dict[int, list[ProviderEndpoint]] = {}
    for endpoint in route.endpoints:
        by_provider.setdefault(endpoint.org_id, []).append(endpoint)
    payg = sorted(
        (provider for provider in by_provider if provider not in entitled),
        key=lambda provider: (provider not in best_ask, best_ask.get(provider, 0)),
    )
    ordered = [
        Candidate(
            endpoint_id=endpoint.id,
            base_url=endpoint.base_url.rstrip("/"),
            provider_org_id=provider,
            entitlement_ids=entitled.get(provider, []),
        )
        for provider in [*entitled, *payg]
        for endpoint in by_provider[provider]
    ]
    for candidate in ordered:
        candidate.health_class = route.health[candidate.endpoint_id].health_class
    return sorted(ordered, key=lambda candidate: candidate.health_class)  # stable: keeps order


def model_list() -> dict[str, list[str]]:
    """Model name -> symbols of the open markets where a verified endpoint serves it.

    Every key with the relay scope may use all of them; `X-Region` or the key's default region
    picks the market.
    """
    served: dict[str, set[str]] = {}
    endpoints = ProviderEndpoint.objects.filter(
        status=ProviderEndpoint.Status.VERIFIED, market__status=Market.Status.OPEN
    ).select_related("market__tier")
    for endpoint in endpoints:
        for model in endpoint.models:
            if endpoint.market.tier.admits(model):
                served.setdefault(model, set()).add(endpoint.market.symbol)
    return {model: sorted(symbols) for model, symbols in sorted(served.items())}
