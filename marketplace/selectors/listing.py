"""Reads of what is listed: tiers, markets and provider endpoints."""

from django.db.models import QuerySet

from marketplace.errors import EndpointNotFound, MarketNotFound, TierNotFound
from marketplace.models import Market, ModelTier, ProviderEndpoint


def tier_list() -> QuerySet[ModelTier]:
    """Every model tier, economy first, frontier last."""
    return ModelTier.objects.order_by("rank", "id")


def tier_get_by_slug(*, slug: str) -> ModelTier:
    """The tier with this slug (slugs are stored lower case)."""
    tier = ModelTier.objects.filter(slug=slug.lower()).first()
    if tier is None:
        raise TierNotFound(f"No tier {slug}.")
    return tier


def market_list(*, status: str | None = None) -> QuerySet[Market]:
    markets = Market.objects.select_related("tier", "region")
    if status is not None:
        markets = markets.filter(status=status)
    return markets.order_by("tier__rank", "tier_id", "region_id", "id")


def market_get(*, market_id: int) -> Market:
    market = Market.objects.select_related("tier", "region").filter(pk=market_id).first()
    if market is None:
        raise MarketNotFound()
    return market


def market_get_by_symbol(*, symbol: str) -> Market:
    """The market named `symbol`, case-insensitively (symbols are stored upper case)."""
    market = Market.objects.select_related("tier", "region").filter(symbol=symbol.upper()).first()
    if market is None:
        raise MarketNotFound(f"No market {symbol}.")
    return market


def endpoint_list(*, org_id: int, market_id: int | None = None) -> QuerySet[ProviderEndpoint]:
    endpoints = ProviderEndpoint.objects.filter(org_id=org_id).select_related("market")
    if market_id is not None:
        endpoints = endpoints.filter(market_id=market_id)
    return endpoints.order_by("market_id", "id")


def endpoint_get(*, org_id: int, endpoint_id: int) -> ProviderEndpoint:
    endpoint = (
        ProviderEndpoint.objects.select_related("market")
        .filter(pk=endpoint_id, org_id=org_id)
        .first()
    )
    if endpoint is None:
        raise EndpointNotFound()
    return endpoint
