"""Reads of a market's book and trades, from the database, never from the engine's memory."""

from dataclasses import dataclass

from django.db.models import (
    BigIntegerField,
    Case,
    CharField,
    Count,
    F,
    Q,
    QuerySet,
    Sum,
    Value,
    When,
)

from marketplace.models import Market, Order, Side, Trade

DEFAULT_DEPTH_LEVELS = 20
MAX_DEPTH_LEVELS = 200
MAX_RECENT_TRADES = 500


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
    """The market's latest trades, newest first, each with `taker_side` (who took liquidity)."""
    return (
        Trade.objects.filter(market=market)
        .annotate(taker_side=F("taker_order__side"))
        .order_by("-id")[: max(1, min(limit, MAX_RECENT_TRADES))]
    )


def trade_list_for_org(
    *,
    org_id: int,
    market_id: int | None = None,
    market_symbol: str | None = None,
    side: str | None = None,
) -> QuerySet[Trade]:
    """Trades the org bought or sold in, newest first.

    Each row carries `org_side` ("buy" when the org was the buyer, else "sell"; a self-trade,
    which only `stp=none` allows, shows once, as a buy, unless `side` asks for sells) and
    `taker_side`; `org_fee_micro` is the buyer's fee on the org's buys and None on its sells
    (the seller's fee is charged on delivery). `side` keeps only the
    trades where the org was the buyer ("buy") or the seller ("sell").
    """
    if side == Side.BUY:
        trades = Trade.objects.filter(buyer_org_id=org_id)
    elif side == Side.SELL:
        trades = Trade.objects.filter(seller_org_id=org_id)
    else:
        trades = Trade.objects.filter(Q(buyer_org_id=org_id) | Q(seller_org_id=org_id))
    if market_id is not None:
        trades = trades.filter(market_id=market_id)
    if market_symbol is not None:
        trades = trades.filter(market__symbol=market_symbol.upper())
    if side == Side.SELL:
        org_side = Value(Side.SELL.value, output_field=CharField())
        org_fee = Value(None, output_field=BigIntegerField())
    else:
        org_side = Case(
            When(buyer_org_id=org_id, then=Value(Side.BUY.value)),
            default=Value(Side.SELL.value),
            output_field=CharField(),
        )
        org_fee = Case(When(buyer_org_id=org_id, then=F("buyer_fee_micro")), default=None)
    return (
        trades.select_related("market")
        .annotate(org_side=org_side, org_fee_micro=org_fee, taker_side=F("taker_order__side"))
        .order_by("-id")
    )
