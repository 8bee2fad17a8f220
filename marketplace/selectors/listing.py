"""Reads of what is listed: tiers, markets and provider endpoints."""

from django.db import connection
from django.db.models import QuerySet

from core.rows import ModelColumns, instances, select_list
from marketplace.errors import EndpointNotFound, MarketNotFound, TierNotFound
from marketplace.models import Market, ModelTier, ProviderEndpoint, Region


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
    # An id past the column's range names no market (and SQLite would refuse the parameter).
    is_in_range = 0 < market_id < 2**63
    market = _market_with_tier_and_region("id", market_id) if is_in_range else None
    if market is None:
        raise MarketNotFound()
    return market


def market_get_by_symbol(*, symbol: str) -> Market:
    """The market named `symbol`, case-insensitively (symbols are stored upper case)."""
    market = _market_with_tier_and_region("symbol", symbol.upper())
    if market is None:
        raise MarketNotFound(f"No market {symbol}.")
    return market


_MARKET_PARTS = (
    ModelColumns(Market, "mk"),
    ModelColumns(ModelTier, "t"),
    ModelColumns(Region, "r"),
)
_MARKET_SQL: dict[tuple[str, str], str] = {}  # by (database vendor, column)


def _market_with_tier_and_region(column: str, value) -> Market | None:
    """The market whose unique `column` is `value`, its tier and region loaded: one query.

    Every order and most market-data requests read their market first, so the query is written
    once (core.rows) rather than compiled by the ORM on each request.
    """
    sql = _MARKET_SQL.get((connection.vendor, column))
    if sql is None:
        table = connection.ops.quote_name
        columns = select_list(_MARKET_PARTS, connection)
        sql = _MARKET_SQL[(connection.vendor, column)] = (
            f"SELECT {columns}"  # noqa: S608 (names from our models; the value is a parameter)
            f" FROM {table(Market._meta.db_table)} AS mk"
            f" JOIN {table(ModelTier._meta.db_table)} AS t ON t.id = mk.tier_id"
            f" JOIN {table(Region._meta.db_table)} AS r ON r.id = mk.region_id"
            f" WHERE mk.{table(column)} = %s"
        )
    with connection.cursor() as cursor:
        cursor.execute(sql, [value])
        row = cursor.fetchone()
    if row is None:
        return None
    market, market.tier, market.region = instances(row, _MARKET_PARTS, connection)
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
