"""Tier price indexes: what a tier's tokens cost across its regions' markets, from the trades.

The averaging, bucketing and window rules are those of marketdata.py.
"""

from dataclasses import dataclass
from datetime import datetime, timedelta

from django.db.models import Count, Sum
from django.utils import timezone

from core.units import BP_PER_UNIT, div_floor
from marketplace.models import Market, ModelTier, Trade
from marketplace.selectors.marketdata import DEFAULT_BUCKETS, as_aware, trades_by_bucket, vwap_micro

INDEX_WINDOW = timedelta(hours=24)


@dataclass(frozen=True)
class IndexComponent:
    """One market's part in its tier's index: its own VWAP and its share of the volume."""

    market: Market
    vwap_micro: int | None
    volume_tokens: int
    notional_micro: int
    trade_count: int
    weight_bp: int  # share of the tier's billable tokens in the window, rounded down


@dataclass(frozen=True)
class PriceIndex:
    """A tier's token price index over a window; `price_micro` is None when nothing traded."""

    tier: ModelTier
    window_start: datetime
    window_end: datetime
    price_micro: int | None
    volume_tokens: int
    notional_micro: int
    trade_count: int
    components: tuple[IndexComponent, ...]


@dataclass(frozen=True)
class IndexPoint:
    """One bucket of a tier's index history: the VWAP across the tier's markets."""

    start: datetime
    price_micro: int
    volume_tokens: int
    notional_micro: int
    trade_count: int


def _weight_bp(part: int, whole: int) -> int:
    if not whole:
        return 0
    weight, _ = div_floor(part * BP_PER_UNIT, whole)
    return weight


def tier_price_index_list(
    *,
    tiers: list[ModelTier] | None = None,
    now: datetime | None = None,
    window: timedelta = INDEX_WINDOW,
) -> list[PriceIndex]:
    """The price index of each tier (default: every tier, in display order); see tier_price_index.

    One grouped query over the window's trades serves every tier.
    """
    now = as_aware(now) or timezone.now()
    window_start = now - window
    if tiers is None:
        tiers = list(ModelTier.objects.order_by("rank", "id"))
    tier_ids = [tier.id for tier in tiers]
    markets = list(
        Market.objects.filter(tier_id__in=tier_ids)
        .select_related("tier", "region")
        .order_by("tier_id", "region_id", "id")
    )
    per_market = {
        row["market_id"]: row
        for row in Trade.objects.filter(
            market__tier_id__in=tier_ids, created_at__gte=window_start, created_at__lte=now
        )
        .order_by()
        .values("market_id")
        .annotate(
            volume_tokens=Sum("tokens"),
            notional_micro=Sum("notional_micro"),
            trade_count=Count("id"),
        )
    }
    indexes = []
    for tier in tiers:
        own = [market for market in markets if market.tier_id == tier.id]
        empty = {"volume_tokens": 0, "notional_micro": 0, "trade_count": 0}
        figures = {market.id: per_market.get(market.id, empty) for market in own}
        tokens = sum(row["volume_tokens"] for row in figures.values())
        notional = sum(row["notional_micro"] for row in figures.values())
        components = tuple(
            IndexComponent(
                market=market,
                vwap_micro=vwap_micro(
                    notional_micro=figures[market.id]["notional_micro"],
                    tokens=figures[market.id]["volume_tokens"],
                ),
                volume_tokens=figures[market.id]["volume_tokens"],
                notional_micro=figures[market.id]["notional_micro"],
                trade_count=figures[market.id]["trade_count"],
                weight_bp=_weight_bp(figures[market.id]["volume_tokens"], tokens),
            )
            for market in own
        )
        indexes.append(
            PriceIndex(
                tier=tier,
                window_start=window_start,
                window_end=now,
                price_micro=vwap_micro(notional_micro=notional, tokens=tokens),
                volume_tokens=tokens,
                notional_micro=notional,
                trade_count=sum(row["trade_count"] for row in figures.values()),
                components=components,
            )
        )
    return indexes


def tier_price_index(
    *, tier: ModelTier, now: datetime | None = None, window: timedelta = INDEX_WINDOW
) -> PriceIndex:
    """The tier's token price index: the VWAP of every trade in every market of the tier.

    Rule: price = floor(sum of notional x 1,000,000 / sum of billable tokens) over the trades of
    all the tier's markets (one per region) from `now - window` to `now`, both included. So each
    region's market weighs in by the billable tokens it traded, and a market that did not trade
    weighs nothing. Prices are per 1M billable tokens in every market, so regions with different
    lot sizes compare directly. None when no market of the tier traded in the window.
    """
    return tier_price_index_list(tiers=[tier], now=now, window=window)[0]


def tier_price_index_history(
    *,
    tier: ModelTier,
    interval: str,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = DEFAULT_BUCKETS,
) -> list[IndexPoint]:
    """The tier's index per bucket, oldest first: the rule of tier_price_index within each bucket.

    Buckets without a trade in any of the tier's markets are left out; the bucket window and
    `limit` work as in market_candles.
    """
    rows = trades_by_bucket(
        Trade.objects.filter(market__tier=tier),
        interval=interval,
        start=start,
        end=end,
        limit=limit,
    )
    return [
        IndexPoint(
            start=row["start"],
            price_micro=vwap_micro(
                notional_micro=row["notional_micro"], tokens=row["volume_tokens"]
            ),
            volume_tokens=row["volume_tokens"],
            notional_micro=row["notional_micro"],
            trade_count=row["trade_count"],
        )
        for row in rows
    ]
