"""Market data: book depth, public trades, candles, the ticker, tier price indexes, and the org's
own trades. Trades come from the real engine where the time does not matter, and are written
directly (`_trade`) where a test needs them at chosen times."""

import itertools
from datetime import UTC, datetime, timedelta

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from accounts.principal import Principal
from marketplace import engine, selectors
from marketplace.models import Order, Trade
from marketplace.services import order_place
from tests.accounts.factories import MembershipFactory
from tests.marketplace.factories import MarketFactory, ModelTierFactory, RegionFactory

pytestmark = pytest.mark.django_db

DAY = datetime(2026, 3, 2, tzinfo=UTC)
_sequences = itertools.count(1)


@pytest.fixture(autouse=True)
def _fresh_books():
    engine._BOOKS.clear()
    yield
    engine._BOOKS.clear()


@pytest.fixture
def place_order(market, django_capture_on_commit_callbacks):
    """Place through the service; the test runs the engine itself."""

    def place(principal, **fields):
        fields = {"market_id": market.id, "lots": 10, **fields}
        with django_capture_on_commit_callbacks(execute=False):
            return order_place(principal=principal, **fields)

    return place


def _order(market, org, side: str, price_micro: int, lots: int, status=Order.Status.FILLED):
    filled = lots if status == Order.Status.FILLED else 0
    return Order.objects.create(
        org=org,
        market=market,
        side=side,
        price_micro=price_micro,
        lots=lots,
        filled_lots=filled,
        status=status,
        sequence=next(_sequences),
    )


def _trade(market, *, at: datetime, price_micro: int, lots: int, buyer_org, seller_org) -> Trade:
    """A trade at a chosen time, the bid taking a resting ask, as the engine would write it."""
    maker = _order(market, seller_org, Order.Side.SELL, price_micro, lots)
    taker = _order(market, buyer_org, Order.Side.BUY, price_micro, lots)
    return Trade.objects.create(
        market=market,
        taker_order=taker,
        maker_order=maker,
        buyer_org=buyer_org,
        seller_org=seller_org,
        price_micro=price_micro,
        lots=lots,
        tokens=lots * market.lot_tokens,
        notional_micro=market.notional_micro(lots=lots, price_micro=price_micro),
        sequence=taker.sequence,
        created_at=at,
    )


@pytest.fixture
def trade_at(market, buyer, provider):
    def make(at: datetime, price_micro: int, lots: int, in_market=None) -> Trade:
        return _trade(
            in_market or market,
            at=at,
            price_micro=price_micro,
            lots=lots,
            buyer_org=buyer.org,
            seller_org=provider.org,
        )

    return make


def _at(hour: int, minute: int, second: int = 0, day: int = 0) -> datetime:
    return DAY + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


@pytest.fixture
def day_of_trades(trade_at):
    """Six trades over two days; 1-minute gaps and a 1-hour gap leave empty buckets."""
    trade_at(_at(12, 0, 10), 5_000_000, 2)
    trade_at(_at(12, 0, 50), 5_100_000, 3)
    trade_at(_at(12, 3), 4_900_000, 1)
    trade_at(_at(12, 7), 5_200_000, 4)
    trade_at(_at(13, 30), 5_000_000, 2)
    trade_at(_at(0, 10, day=1), 4_800_000, 5)


def _ohlc(candles) -> list[tuple]:
    return [
        (c.start, c.open_micro, c.high_micro, c.low_micro, c.close_micro, c.volume_lots)
        for c in candles
    ]


# Candles


def test_one_minute_candles_leave_out_empty_minutes(market, day_of_trades):
    candles = selectors.market_candles(market=market, interval="1m")

    assert _ohlc(candles) == [
        (_at(12, 0), 5_000_000, 5_100_000, 5_000_000, 5_100_000, 5),
        (_at(12, 3), 4_900_000, 4_900_000, 4_900_000, 4_900_000, 1),
        (_at(12, 7), 5_200_000, 5_200_000, 5_200_000, 5_200_000, 4),
        (_at(13, 30), 5_000_000, 5_000_000, 5_000_000, 5_000_000, 2),
        (_at(0, 10, day=1), 4_800_000, 4_800_000, 4_800_000, 4_800_000, 5),
    ]
    first = candles[0]
    assert (first.trade_count, first.volume_tokens, first.notional_micro) == (
        2,
        5_000_000,
        10_000_000 + 15_300_000,
    )
    assert all(c.start.tzinfo is not None and c.start.utcoffset() == timedelta(0) for c in candles)


def test_five_minute_candles_start_on_multiples_of_five(market, day_of_trades):
    candles = selectors.market_candles(market=market, interval="5m")

    assert _ohlc(candles) == [
        (_at(12, 0), 5_000_000, 5_100_000, 4_900_000, 4_900_000, 6),
        (_at(12, 5), 5_200_000, 5_200_000, 5_200_000, 5_200_000, 4),
        (_at(13, 30), 5_000_000, 5_000_000, 5_000_000, 5_000_000, 2),
        (_at(0, 10, day=1), 4_800_000, 4_800_000, 4_800_000, 4_800_000, 5),
    ]
    assert [c.trade_count for c in candles] == [3, 1, 1, 1]


def test_hourly_and_daily_candles_aggregate_the_whole_bucket(market, day_of_trades):
    hourly = selectors.market_candles(market=market, interval="1h")
    daily = selectors.market_candles(market=market, interval="1d")

    assert _ohlc(hourly) == [
        (_at(12, 0), 5_000_000, 5_200_000, 4_900_000, 5_200_000, 10),
        (_at(13, 0), 5_000_000, 5_000_000, 5_000_000, 5_000_000, 2),
        (_at(0, 0, day=1), 4_800_000, 4_800_000, 4_800_000, 4_800_000, 5),
    ]
    assert _ohlc(daily) == [
        (DAY, 5_000_000, 5_200_000, 4_900_000, 5_000_000, 12),
        (DAY + timedelta(days=1), 4_800_000, 4_800_000, 4_800_000, 4_800_000, 5),
    ]
    # 2 x 5.00 + 3 x 5.10 + 1 x 4.90 + 4 x 5.20 + 2 x 5.00, in lots of 1M tokens
    assert daily[0].notional_micro == 10_000_000 + 15_300_000 + 4_900_000 + 20_800_000 + 10_000_000
    assert (daily[0].trade_count, daily[0].volume_tokens) == (5, 12_000_000)


def test_candles_keep_to_their_market(market, day_of_trades, trade_at):
    trade_at(_at(12, 1), 5_900_000, 7, in_market=MarketFactory())

    assert [c.volume_lots for c in selectors.market_candles(market=market, interval="1h")] == [
        10,
        2,
        5,
    ]


def test_the_window_takes_buckets_that_start_inside_it(market, day_of_trades):
    # 12:01 is inside the 12:00 bucket, which starts before the window: it is left out.
    candles = selectors.market_candles(
        market=market, interval="5m", start=_at(12, 1), end=_at(13, 30)
    )

    assert [c.start for c in candles] == [_at(12, 5)]


def test_the_limit_takes_the_latest_buckets_or_the_first_after_start(market, day_of_trades):
    latest = selectors.market_candles(market=market, interval="1m", limit=2)
    from_start = selectors.market_candles(market=market, interval="1m", start=DAY, limit=2)

    assert [c.start for c in latest] == [_at(13, 30), _at(0, 10, day=1)]
    assert [c.start for c in from_start] == [_at(12, 0), _at(12, 3)]


def test_the_candle_api_writes_prices_as_decimal_strings(market, day_of_trades):
    response = APIClient().get(
        f"/api/v1/markets/{market.symbol.lower()}/candles",
        {"interval": "1d", "start": "2026-03-02T00:00:00Z"},
    )

    assert response.status_code == 200, response.json()
    body = response.json()
    assert (body["market"], body["interval"]) == (market.symbol, "1d")
    assert body["candles"][0] == {
        "start": "2026-03-02T00:00:00Z",
        "open": "5.000000",
        "high": "5.200000",
        "low": "4.900000",
        "close": "5.000000",
        "volume_lots": 12,
        "volume_tokens": 12_000_000,
        "notional": "61.000000",
        "trade_count": 5,
    }
    assert [c["start"] for c in body["candles"]] == ["2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z"]


# Ticker

NOW = _at(18, 0)


def test_the_ticker_sums_the_last_24_hours(market, trade_at, buyer, provider):
    trade_at(NOW - timedelta(hours=25), 4_000_000, 9)  # before the window
    trade_at(NOW - timedelta(hours=20), 5_000_000, 2)
    trade_at(NOW - timedelta(hours=5), 5_300_000, 3)
    trade_at(NOW - timedelta(hours=1), 5_100_000, 1)
    trade_at(NOW + timedelta(minutes=1), 5_900_000, 1)  # after `now`
    _order(market, buyer.org, Order.Side.BUY, 4_900_000, 3, status=Order.Status.OPEN)
    _order(market, buyer.org, Order.Side.BUY, 4_800_000, 3, status=Order.Status.OPEN)
    _order(market, provider.org, Order.Side.SELL, 5_400_000, 3, status=Order.Status.OPEN)
    _order(market, provider.org, Order.Side.SELL, 5_000_000, 3, status=Order.Status.CANCELLED)

    ticker = selectors.market_ticker(market=market, now=NOW)

    assert (ticker.window_start, ticker.window_end) == (NOW - timedelta(hours=24), NOW)
    assert (ticker.last_price_micro, ticker.open_price_micro) == (5_100_000, 5_000_000)
    assert (ticker.change_micro, ticker.change_bp) == (100_000, 200)
    assert (ticker.high_micro, ticker.low_micro) == (5_300_000, 5_000_000)
    assert (ticker.volume_lots, ticker.volume_tokens, ticker.trade_count) == (6, 6_000_000, 3)
    assert ticker.notional_micro == 10_000_000 + 15_900_000 + 5_100_000
    # 31.00 / 6M tokens = 5.1666...: rounded down to the micro-USD.
    assert ticker.vwap_micro == 5_166_666
    assert (ticker.best_bid_micro, ticker.best_ask_micro) == (4_900_000, 5_400_000)


def test_a_fall_in_basis_points_rounds_toward_zero(market, trade_at):
    trade_at(NOW - timedelta(hours=2), 4_900_000, 2)
    trade_at(NOW - timedelta(hours=1), 4_800_000, 2)

    ticker = selectors.market_ticker(market=market, now=NOW)

    # -0.10 / 4.90 = -204.08 bp: toward zero is -204 (floor would overstate it as -205).
    assert (ticker.change_micro, ticker.change_bp) == (-100_000, -204)


def test_a_quiet_day_keeps_the_last_price_and_nothing_else(market, trade_at):
    trade_at(NOW - timedelta(hours=30), 4_500_000, 2)

    ticker = selectors.market_ticker(market=market, now=NOW)

    assert ticker.last_price_micro == 4_500_000
    assert (ticker.open_price_micro, ticker.change_micro, ticker.change_bp) == (None, None, None)
    assert (ticker.high_micro, ticker.low_micro, ticker.vwap_micro) == (None, None, None)
    assert (ticker.volume_lots, ticker.volume_tokens, ticker.notional_micro) == (0, 0, 0)
    assert ticker.trade_count == 0
    assert (ticker.best_bid_micro, ticker.best_ask_micro) == (None, None)


def test_the_ticker_api_writes_money_as_strings_and_nulls_for_no_data(market, trade_at):
    now = timezone.now()
    trade_at(now - timedelta(hours=3), 5_000_000, 2)
    trade_at(now - timedelta(hours=2), 5_010_000, 1)

    body = APIClient().get(f"/api/v1/markets/{market.symbol}/ticker").json()

    assert (body["last_price"], body["open_price"], body["change"]) == (
        "5.010000",
        "5.000000",
        "0.010000",
    )
    assert body["change_bp"] == 20
    # (10.00 + 5.01) / 3M tokens = 5.003333...
    assert (body["vwap"], body["notional"], body["volume_tokens"]) == (
        "5.003333",
        "15.010000",
        3_000_000,
    )
    assert (body["best_bid"], body["best_ask"]) == (None, None)

    empty = APIClient().get(f"/api/v1/markets/{MarketFactory().symbol}/ticker").json()
    assert (empty["last_price"], empty["vwap"], empty["trade_count"]) == (None, None, 0)


# Tier price index


@pytest.fixture
def tier_markets(db):
    """One tier in three regions (one with 2M-token lots, one that never trades)."""
    tier = ModelTierFactory(slug="frontier", name="Frontier", rank=5)
    eu = MarketFactory(tier=tier, region=RegionFactory(code="eu"), symbol="FRONTIER-EU")
    us = MarketFactory(
        tier=tier, region=RegionFactory(code="us"), symbol="FRONTIER-US", lot_tokens=2_000_000
    )
    ap = MarketFactory(tier=tier, region=RegionFactory(code="ap"), symbol="FRONTIER-AP")
    return tier, eu, us, ap


def test_the_index_weighs_each_region_by_its_billable_tokens(tier_markets, trade_at):
    tier, eu, us, _ = tier_markets
    trade_at(NOW - timedelta(hours=3), 5_000_000, 10, in_market=eu)  # 10M tokens, $50
    trade_at(NOW - timedelta(hours=2), 6_000_000, 15, in_market=us)  # 30M tokens, $180
    trade_at(NOW - timedelta(hours=30), 9_000_000, 50, in_market=us)  # before the window
    trade_at(NOW - timedelta(hours=1), 1_000_000, 50, in_market=MarketFactory())  # another tier

    index = selectors.tier_price_index(tier=tier, now=NOW)

    # $230 over 40M tokens: $5.75, where the plain mean of the regions would say $5.50.
    assert index.price_micro == 5_750_000
    assert (index.volume_tokens, index.notional_micro, index.trade_count) == (
        40_000_000,
        230_000_000,
        2,
    )
    assert [
        (c.market.symbol, c.vwap_micro, c.volume_tokens, c.weight_bp) for c in index.components
    ] == [
        ("FRONTIER-EU", 5_000_000, 10_000_000, 2_500),
        ("FRONTIER-US", 6_000_000, 30_000_000, 7_500),
        ("FRONTIER-AP", None, 0, 0),
    ]


def test_the_index_rounds_down_and_is_null_without_trades(tier_markets, trade_at):
    tier, eu, _, _ = tier_markets
    assert selectors.tier_price_index(tier=tier, now=NOW).price_micro is None

    trade_at(NOW - timedelta(hours=2), 5_000_000, 2, in_market=eu)  # 2M tokens, $10
    trade_at(NOW - timedelta(hours=1), 5_010_000, 1, in_market=eu)  # 1M tokens, $5.01

    assert selectors.tier_price_index(tier=tier, now=NOW).price_micro == 5_003_333


def test_the_index_history_combines_the_regions_per_bucket(tier_markets, trade_at):
    tier, eu, us, _ = tier_markets
    trade_at(_at(12, 10), 5_000_000, 10, in_market=eu)
    trade_at(_at(12, 50), 6_000_000, 15, in_market=us)
    trade_at(_at(15, 5), 4_000_000, 2, in_market=eu)

    points = selectors.tier_price_index_history(tier=tier, interval="1h")

    assert [(p.start, p.price_micro, p.volume_tokens, p.trade_count) for p in points] == [
        (_at(12, 0), 5_750_000, 40_000_000, 2),
        (_at(15, 0), 4_000_000, 2_000_000, 1),
    ]


def test_the_index_api_lists_every_tier_and_serves_a_history(market, tier_markets, trade_at):
    _, eu, us, _ = tier_markets
    quiet = ModelTierFactory(slug="economy", rank=1)
    now = timezone.now()
    trade_at(now - timedelta(hours=2), 5_000_000, 10, in_market=eu)
    trade_at(now - timedelta(hours=1), 6_000_000, 15, in_market=us)

    listed = APIClient().get("/api/v1/index").json()

    # In display order; `market` is in a tier of rank 0 that has not traded either.
    assert [row["tier"] for row in listed] == [market.tier.slug, quiet.slug, "frontier"]
    assert (listed[1]["price"], listed[1]["components"]) == (None, [])
    assert (listed[0]["price"], listed[0]["components"][0]["market"]) == (None, market.symbol)
    frontier = listed[2]
    assert (frontier["price"], frontier["notional"], frontier["volume_tokens"]) == (
        "5.750000",
        "230.000000",
        40_000_000,
    )
    assert [(c["market"], c["region"], c["weight_bp"]) for c in frontier["components"]] == [
        ("FRONTIER-EU", "eu", 2_500),
        ("FRONTIER-US", "us", 7_500),
        ("FRONTIER-AP", "ap", 0),
    ]

    history = APIClient().get("/api/v1/index/FRONTIER", {"interval": "1d"}).json()
    assert (history["tier"], history["interval"]) == ("frontier", "1d")
    assert sum(p["volume_tokens"] for p in history["points"]) == 40_000_000
    assert {p["price"] for p in history["points"]} <= {"5.750000", "5.000000", "6.000000"}


# Book depth and public trades, through the engine


@pytest.fixture
def traded_book(market, seller, buyer, fund, place_order):
    """Bids 10 + 5 lots at $4.90 and 4 at $4.80; asks 8 at $5.10 (3 of them then bought) and
    6 at $5.20."""
    fund(buyer.org.id, 1_000_000_000)
    place_order(buyer, side="buy", price_micro=4_900_000, lots=10)
    place_order(buyer, side="buy", price_micro=4_900_000, lots=5)
    place_order(buyer, side="buy", price_micro=4_800_000, lots=4)
    place_order(seller, side="sell", price_micro=5_100_000, lots=8)
    place_order(seller, side="sell", price_micro=5_200_000, lots=6)
    place_order(buyer, side="buy", price_micro=5_100_000, lots=3)
    engine.market_match(market_id=market.id)
    return market


def test_book_depth_adds_up_resting_lots_per_price(traded_book):
    depth = selectors.book_depth(market=traded_book, levels=10)

    assert [(lv.price_micro, lv.lots, lv.orders) for lv in depth.bids] == [
        (4_900_000, 15, 2),
        (4_800_000, 4, 1),
    ]
    assert [(lv.price_micro, lv.lots, lv.orders) for lv in depth.asks] == [
        (5_100_000, 5, 1),
        (5_200_000, 6, 1),
    ]


def test_the_book_api_keeps_the_best_levels(traded_book):
    response = APIClient().get(f"/api/v1/markets/{traded_book.symbol}/book", {"levels": 1})

    assert response.status_code == 200
    assert response.json() == {
        "market": traded_book.symbol,
        "bids": [{"price": "4.900000", "lots": 15, "orders": 2}],
        "asks": [{"price": "5.100000", "lots": 5, "orders": 1}],
    }


def test_public_trades_are_newest_first_and_show_the_takers_side(traded_book, trade_at):
    trade_at(timezone.now(), 5_200_000, 2)  # a later trade

    body = APIClient().get(f"/api/v1/markets/{traded_book.symbol}/trades").json()

    assert [(row["price"], row["lots"], row["side"]) for row in body] == [
        ("5.200000", 2, "buy"),
        ("5.100000", 3, "buy"),
    ]
    assert body[1]["notional"] == "15.300000"
    assert "buyer_org" not in body[1] and "seller_org" not in body[1]

    limited = APIClient().get(f"/api/v1/markets/{traded_book.symbol}/trades", {"limit": 1})
    assert len(limited.json()) == 1


def test_an_ask_taking_a_bid_shows_as_a_sell(market, seller, buyer, fund, place_order):
    fund(buyer.org.id, 100_000_000)
    place_order(buyer, side="buy", price_micro=5_000_000, lots=4)
    place_order(seller, side="sell", price_micro=4_900_000, lots=4)
    engine.market_match(market_id=market.id)

    body = APIClient().get(f"/api/v1/markets/{market.symbol}/trades").json()

    assert [(row["price"], row["side"]) for row in body] == [("5.000000", "sell")]


# Bad parameters


@pytest.mark.parametrize(
    ("path", "query", "field"),
    [
        ("book", {"levels": 0}, "levels"),
        ("book", {"levels": 101}, "levels"),
        ("book", {"levels": "ten"}, "levels"),
        ("trades", {"limit": 0}, "limit"),
        ("trades", {"limit": 501}, "limit"),
        ("candles", {}, "interval"),
        ("candles", {"interval": "2m"}, "interval"),
        ("candles", {"interval": "1h", "start": "yesterday"}, "start"),
        ("candles", {"interval": "1h", "limit": 1001}, "limit"),
        (
            "candles",
            {"interval": "1h", "start": "2026-03-02T12:00:00Z", "end": "2026-03-02T12:00:00Z"},
            "start",
        ),
    ],
)
def test_a_bad_market_data_parameter_is_a_400_with_the_field(market, path, query, field):
    response = APIClient().get(f"/api/v1/markets/{market.symbol}/{path}", query)

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert field in error["fields"]


def test_a_bad_index_interval_is_a_400_and_an_unknown_tier_a_404(tier_markets):
    bad = APIClient().get("/api/v1/index/frontier", {"interval": "1w"})
    unknown = APIClient().get("/api/v1/index/nope", {"interval": "1h"})

    assert bad.status_code == 400
    assert (bad.json()["error"]["code"], list(bad.json()["error"]["fields"])) == (
        "invalid",
        ["interval"],
    )
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "tier_not_found"


@pytest.mark.parametrize("path", ["book", "trades", "candles?interval=1h", "ticker"])
def test_market_data_for_an_unknown_market_is_a_404(db, path):
    response = APIClient().get(f"/api/v1/markets/NOPE-XX/{path}")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "market_not_found"


def test_a_far_future_window_is_empty_not_an_error(market, day_of_trades):
    response = APIClient().get(
        f"/api/v1/markets/{market.symbol}/candles",
        {"interval": "1d", "start": "9999-12-31T12:00:00Z"},
    )

    assert response.status_code == 200
    assert response.json()["candles"] == []


# The org's own trades


@pytest.fixture
def outsider(db) -> Principal:
    return Principal.for_membership(MembershipFactory(org__name="Someone Else"))


def test_the_trade_list_shows_each_org_its_own_side(
    traded_book, buyer, seller, outsider, buyer_api, seller_api, api_for
):
    trade = Trade.objects.get()
    bought = buyer_api.get("/api/v1/trades").json()["results"]
    sold = seller_api.get("/api/v1/trades").json()["results"]

    assert [(row["id"], row["side"], row["liquidity"]) for row in bought] == [
        (trade.id, "buy", "taker")
    ]
    assert bought[0]["order_id"] == trade.taker_order_id
    assert (bought[0]["price"], bought[0]["notional"], bought[0]["tokens"]) == (
        "5.100000",
        "15.300000",
        3_000_000,
    )
    assert bought[0]["fee"] == "0.038250"  # 25 bp taker fee on $15.30
    assert [(row["id"], row["side"], row["liquidity"]) for row in sold] == [
        (trade.id, "sell", "maker")
    ]
    assert (sold[0]["order_id"], sold[0]["fee"], sold[0]["seller_fee_bp"]) == (
        trade.maker_order_id,
        None,
        trade.seller_fee_bp,
    )
    assert api_for(outsider).get("/api/v1/trades").json()["results"] == []


def test_the_trade_list_filters_by_market_and_side(market, buyer, buyer_api, trade_at):
    other = MarketFactory()
    here = trade_at(_at(12, 0), 5_000_000, 2)
    there = trade_at(_at(12, 1), 5_000_000, 2, in_market=other)

    def ids(query) -> list[int]:
        response = buyer_api.get("/api/v1/trades", query)
        assert response.status_code == 200, response.json()
        return [row["id"] for row in response.json()["results"]]

    assert ids({}) == [there.id, here.id]
    assert ids({"market": other.symbol.lower()}) == [there.id]
    assert ids({"side": "buy"}) == [there.id, here.id]
    assert ids({"side": "sell"}) == []


def test_the_trade_list_comes_in_pages(market, buyer_api, trade_at):
    trades = [trade_at(_at(12, minute), 5_000_000, 2) for minute in range(3)]

    first = buyer_api.get("/api/v1/trades", {"page_size": 2}).json()
    second = buyer_api.get(first["next"]).json()

    assert [row["id"] for row in first["results"]] == [trades[2].id, trades[1].id]
    assert [row["id"] for row in second["results"]] == [trades[0].id]


def test_the_trade_list_needs_a_key_with_read_scope(buyer, api_for):
    assert APIClient().get("/api/v1/trades").status_code == 401
    response = api_for(buyer, scopes=["trade"]).get("/api/v1/trades")
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "permission_denied"


def test_a_bad_trade_filter_is_a_400(buyer_api):
    response = buyer_api.get("/api/v1/trades", {"side": "both"})

    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "side" in response.json()["error"]["fields"]
