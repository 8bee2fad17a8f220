"""Market data from the trades in the database: candles and the 24-hour ticker.

Rules every figure here follows:
- Buckets are aligned to UTC: a "1m" bucket starts on the minute, "5m" on a multiple of five
  minutes past the hour, "1h" on the hour, "1d" at midnight UTC. Buckets without trades are left
  out. Grouping runs in the database with functions both PostgreSQL and SQLite have (truncation
  to the minute, hour or day, and the minute of the hour), so the embedded mode agrees with
  production.
- First and last mean lowest and highest trade id. A market's trades are written by its one
  engine, a batch at a time under the market's lock, all trades of a batch with the batch's
  time, so within a market id order is time order.
- An average price (VWAP) is micro-USD per 1M billable tokens: sum(notional) x 1,000,000 /
  sum(billable tokens), rounded down (core.units.div_floor), like every average price the
  exchange shows. Every trade's notional is exact (the market's tick grid guarantees it), so
  this is the token-weighted mean of the trade prices, less the rounding.
- Windows: a ticker or index window runs from `now - window` to `now`, both included.
  A candle (or index history) request returns buckets whose start lies in [start, end); with a
  start, the first `limit` such buckets, without one, the last `limit`.
"""

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from django.db.models import Count, IntegerField, Max, Min, QuerySet, Sum
from django.db.models.functions import Cast, ExtractMinute, TruncDay, TruncHour, TruncMinute
from django.utils import timezone

from core.errors import ValidationFailed
from core.units import BP_PER_UNIT, TOKENS_PER_PRICE_UNIT, div_floor
from marketplace.models import Market, Order, Trade

INTERVALS: dict[str, timedelta] = {
    "1m": timedelta(minutes=1),
    "5m": timedelta(minutes=5),
    "1h": timedelta(hours=1),
    "1d": timedelta(days=1),
}
DEFAULT_BUCKETS = 500
MAX_BUCKETS = 1000
TICKER_WINDOW = timedelta(hours=24)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Candle:
    """One bucket of a market's trades; prices in micro-USD per 1M billable tokens."""

    start: datetime  # the bucket's start, UTC
    open_micro: int
    high_micro: int
    low_micro: int
    close_micro: int
    volume_lots: int
    volume_tokens: int
    notional_micro: int
    trade_count: int


@dataclass(frozen=True)
class Ticker:
    """A market's last 24 hours. Prices in micro-USD per 1M billable tokens.

    `last_price_micro` is the last trade ever (None before the first); the rest is None when the
    window holds no trade. `change_micro` is last - open; `change_bp` is that change over the
    open in basis points, rounded toward zero. Best bid and ask are the book now.
    """

    market: Market
    window_start: datetime
    window_end: datetime
    last_price_micro: int | None
    open_price_micro: int | None
    change_micro: int | None
    change_bp: int | None
    high_micro: int | None
    low_micro: int | None
    volume_lots: int
    volume_tokens: int
    notional_micro: int
    vwap_micro: int | None
    trade_count: int
    best_bid_micro: int | None
    best_ask_micro: int | None


def vwap_micro(*, notional_micro: int, tokens: int) -> int | None:
    """Volume-weighted average price per 1M billable tokens, rounded down; None with no tokens."""
    if not tokens:
        return None
    price, _ = div_floor(notional_micro * TOKENS_PER_PRICE_UNIT, tokens)
    return price


def _bp_toward_zero(change: int, base: int) -> int:
    """`change` over `base` in basis points, rounded toward zero (a move is never overstated)."""
    magnitude, _ = div_floor(abs(change) * BP_PER_UNIT, base)
    return magnitude if change >= 0 else -magnitude


def as_aware(moment: datetime | None) -> datetime | None:
    if moment is None or timezone.is_aware(moment):
        return moment
    return timezone.make_aware(moment, UTC)  # a naive time is read as UTC


def _interval(interval: str) -> timedelta:
    width = INTERVALS.get(interval)
    if width is None:
        raise ValidationFailed(
            f"interval must be one of {', '.join(INTERVALS)}.",
            fields={"interval": [f"Choose one of {', '.join(INTERVALS)}."]},
        )
    return width


def bucket_start(moment: datetime, interval: str) -> datetime:
    """The start of the UTC bucket of `interval` that holds `moment`."""
    width = _interval(interval)
    moment = as_aware(moment).astimezone(UTC)
    return _EPOCH + ((moment - _EPOCH) // width) * width


def _bucket_ceil(moment: datetime, interval: str) -> datetime | None:
    """The first bucket start at or after `moment`; None past the last date Python can hold."""
    floor = bucket_start(moment, interval)
    if floor == moment:
        return floor
    try:
        return floor + INTERVALS[interval]
    except OverflowError:
        return None


def _bucket_keys(interval: str) -> dict:
    """Database expressions that name a trade's bucket; both backends compute them."""
    if interval == "1m":
        return {"bucket": TruncMinute("created_at", tzinfo=UTC)}
    if interval == "5m":
        minute = Cast(ExtractMinute("created_at", tzinfo=UTC), IntegerField())
        return {
            "bucket": TruncHour("created_at", tzinfo=UTC),
            "slot": minute / 5,  # integer division on both backends
        }
    if interval == "1h":
        return {"bucket": TruncHour("created_at", tzinfo=UTC)}
    return {"bucket": TruncDay("created_at", tzinfo=UTC)}


def trades_by_bucket(
    trades: QuerySet[Trade],
    *,
    interval: str,
    start: datetime | None,
    end: datetime | None,
    limit: int,
) -> list[dict]:
    """Per-bucket aggregates of `trades`, oldest first, each with its `start` (see the module)."""
    _interval(interval)
    start, end = as_aware(start), as_aware(end)
    if start is not None and end is not None and start >= end:
        raise ValidationFailed(
            "start must be before end.", fields={"start": ["Must be before end."]}
        )
    limit = max(1, min(limit, MAX_BUCKETS))
    lower = _bucket_ceil(start, interval) if start is not None else None
    upper = _bucket_ceil(end, interval) if end is not None else None
    if start is not None:
        if lower is None:
            return []  # no bucket starts after the last date there is
        trades = trades.filter(created_at__gte=lower)
    if upper is not None:
        trades = trades.filter(created_at__lt=upper)
    keys = _bucket_keys(interval)
    direction = "" if start is not None else "-"
    rows = list(
        trades.order_by()
        .annotate(**keys)
        .values(*keys)
        .annotate(
            high_micro=Max("price_micro"),
            low_micro=Min("price_micro"),
            volume_lots=Sum("lots"),
            volume_tokens=Sum("tokens"),
            notional_micro=Sum("notional_micro"),
            trade_count=Count("id"),
            first_id=Min("id"),
            last_id=Max("id"),
        )
        .order_by(*(direction + key for key in keys))[:limit]
    )
    if direction:
        rows.reverse()
    for row in rows:
        moment = row.pop("bucket")
        if timezone.is_naive(moment):
            moment = timezone.make_aware(moment, UTC)
        row["start"] = moment.astimezone(UTC) + timedelta(minutes=5 * row.pop("slot", 0))
    return rows


def market_candles(
    *,
    market: Market,
    interval: str,
    start: datetime | None = None,
    end: datetime | None = None,
    limit: int = DEFAULT_BUCKETS,
) -> list[Candle]:
    """OHLCV candles of the market's trades, oldest first; buckets without trades are left out.

    `interval` is one of 1m, 5m, 1h, 1d. Buckets whose start lies in [start, end); with `start`
    the first `limit` of them, otherwise the last `limit` (at most 1,000).
    """
    rows = trades_by_bucket(
        Trade.objects.filter(market=market), interval=interval, start=start, end=end, limit=limit
    )
    ids = {row["first_id"] for row in rows} | {row["last_id"] for row in rows}
    price_of = dict(Trade.objects.filter(pk__in=ids).values_list("id", "price_micro"))
    return [
        Candle(
            start=row["start"],
            open_micro=price_of[row["first_id"]],
            high_micro=row["high_micro"],
            low_micro=row["low_micro"],
            close_micro=price_of[row["last_id"]],
            volume_lots=row["volume_lots"],
            volume_tokens=row["volume_tokens"],
            notional_micro=row["notional_micro"],
            trade_count=row["trade_count"],
        )
        for row in rows
    ]


def _best_price(market: Market, side: str) -> int | None:
    best = Max("price_micro") if side == Order.Side.BUY else Min("price_micro")
    return Order.objects.filter(market=market, side=side, status=Order.Status.OPEN).aggregate(
        best=best
    )["best"]


def market_ticker(*, market: Market, now: datetime | None = None) -> Ticker:
    """The market's 24-hour figures up to `now` (default: the current time), and its best prices."""
    now = as_aware(now) or timezone.now()
    window_start = now - TICKER_WINDOW
    trades = Trade.objects.filter(market=market)
    figures = trades.filter(created_at__gte=window_start, created_at__lte=now).aggregate(
        high_micro=Max("price_micro"),
        low_micro=Min("price_micro"),
        volume_lots=Sum("lots"),
        volume_tokens=Sum("tokens"),
        notional_micro=Sum("notional_micro"),
        trade_count=Count("id"),
        first_id=Min("id"),
    )
    last_price = (
        trades.filter(created_at__lte=now).order_by("-id").values_list("price_micro", flat=True)
    ).first()
    open_price = None
    if figures["first_id"] is not None:
        open_price = trades.filter(pk=figures["first_id"]).values_list("price_micro", flat=True)[0]
    change = None
    change_bp = None
    if open_price is not None and last_price is not None:
        change = last_price - open_price
        change_bp = _bp_toward_zero(change, open_price)
    tokens = figures["volume_tokens"] or 0
    notional = figures["notional_micro"] or 0
    return Ticker(
        market=market,
        window_start=window_start,
        window_end=now,
        last_price_micro=last_price,
        open_price_micro=open_price,
        change_micro=change,
        change_bp=change_bp,
        high_micro=figures["high_micro"],
        low_micro=figures["low_micro"],
        volume_lots=figures["volume_lots"] or 0,
        volume_tokens=tokens,
        notional_micro=notional,
        vwap_micro=vwap_micro(notional_micro=notional, tokens=tokens),
        trade_count=figures["trade_count"],
        best_bid_micro=_best_price(market, Order.Side.BUY),
        best_ask_micro=_best_price(market, Order.Side.SELL),
    )
