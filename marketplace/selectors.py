"""Reads for the marketplace: markets, orders, endpoints, book depth and recent trades. Never write.

Book depth and trades come from the database, never from the engine's memory (DESIGN.md).
"""

from dataclasses import dataclass

from django.db.models import Count, F, Q, QuerySet, Sum

from marketplace.errors import EndpointNotFound, MarketNotFound, OrderNotFound
from marketplace.models import Market, Order, ProviderEndpoint, Trade

DEFAULT_DEPTH_LEVELS = 20
MAX_DEPTH_LEVELS = 200


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


def order_list(
    *,
    org_id: int,
    market_id: int | None = None,
    market_symbol: str | None = None,
    status: str | list[str] | None = None,
    side: str | None = None,
    client_order_id: str | None = None,
) -> QuerySet[Order]:
    """The org's orders, newest first, filtered by whichever arguments are given."""
    orders = Order.objects.filter(org_id=org_id).select_related("market")
    if market_id is not None:
        orders = orders.filter(market_id=market_id)
    if market_symbol is not None:
        orders = orders.filter(market__symbol=market_symbol.upper())
    if isinstance(status, str):
        orders = orders.filter(status=status)
    elif status:
        orders = orders.filter(status__in=status)
    if side is not None:
        orders = orders.filter(side=side)
    if client_order_id is not None:
        orders = orders.filter(client_order_id=client_order_id)
    return orders.order_by("-id")


def order_get(*, org_id: int, order_id: int) -> Order:
    """An order of this org; other orgs' orders do not exist for the caller."""
    order = Order.objects.select_related("market").filter(pk=order_id, org_id=org_id).first()
    if order is None:
        raise OrderNotFound()
    return order


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


@dataclass(frozen=True)
class BookLevel:
    price_micro: int
    lots: int
    orders: int


@dataclass(frozen=True)
class BookDepth:
    market: Market
    bids: list[BookLevel]  # best (highest) first
    asks: list[BookLevel]  # best (lowest) first


def _levels(market: Market, side: str, levels: int) -> list[BookLevel]:
    ordering = "-price_micro" if side == Order.Side.BUY else "price_micro"
    rows = (
        Order.objects.filter(market=market, side=side, status=Order.Status.OPEN)
        .values("price_micro")
        .annotate(lots=Sum(F("lots") - F("filled_lots")), orders=Count("id"))
        .order_by(ordering)[:levels]
    )
    return [BookLevel(row["price_micro"], row["lots"], row["orders"]) for row in rows]


def book_depth(*, market: Market, levels: int = DEFAULT_DEPTH_LEVELS) -> BookDepth:
    """Resting lots per price level on each side, from the open orders."""
    levels = max(1, min(levels, MAX_DEPTH_LEVELS))
    return BookDepth(
        market=market,
        bids=_levels(market, Order.Side.BUY, levels),
        asks=_levels(market, Order.Side.SELL, levels),
    )


def trade_list_recent(*, market: Market, limit: int = 50) -> QuerySet[Trade]:
    """The market's latest trades, newest first."""
    return Trade.objects.filter(market=market).order_by("-id")[: max(1, min(limit, 500))]


def trade_list_for_org(*, org_id: int, market_id: int | None = None) -> QuerySet[Trade]:
    """Trades the org bought or sold in, newest first."""
    trades = Trade.objects.filter(Q(buyer_org_id=org_id) | Q(seller_org_id=org_id))
    if market_id is not None:
        trades = trades.filter(market_id=market_id)
    return trades.select_related("market").order_by("-id")
