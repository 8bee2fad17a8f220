"""Reads for the marketplace. Never write.

- listing: tiers, markets, provider endpoints.
- orders: an org's orders.
- book: book depth, a market's recent trades, an org's trades.
- marketdata: candles and the 24-hour ticker.
- index: the tier price indexes and their history.

Market data comes from the database, never from the engine's memory (DESIGN.md).
"""

from marketplace.selectors.book import (
    DEFAULT_DEPTH_LEVELS,
    MAX_DEPTH_LEVELS,
    MAX_RECENT_TRADES,
    BookDepth,
    BookLevel,
    book_depth,
    trade_list_for_org,
    trade_list_recent,
)
from marketplace.selectors.index import (
    INDEX_WINDOW,
    IndexComponent,
    IndexPoint,
    PriceIndex,
    tier_price_index,
    tier_price_index_history,
    tier_price_index_list,
)
from marketplace.selectors.listing import (
    endpoint_get,
    endpoint_list,
    market_get,
    market_get_by_symbol,
    market_list,
    tier_get_by_slug,
    tier_list,
)
from marketplace.selectors.marketdata import (
    DEFAULT_BUCKETS,
    INTERVALS,
    MAX_BUCKETS,
    Candle,
    Ticker,
    bucket_start,
    market_candles,
    market_ticker,
    vwap_micro,
)
from marketplace.selectors.orders import order_get, order_list

__all__ = [
    "DEFAULT_BUCKETS",
    "DEFAULT_DEPTH_LEVELS",
    "INDEX_WINDOW",
    "INTERVALS",
    "MAX_BUCKETS",
    "MAX_DEPTH_LEVELS",
    "MAX_RECENT_TRADES",
    "BookDepth",
    "BookLevel",
    "Candle",
    "IndexComponent",
    "IndexPoint",
    "PriceIndex",
    "Ticker",
    "book_depth",
    "bucket_start",
    "endpoint_get",
    "endpoint_list",
    "market_candles",
    "market_get",
    "market_get_by_symbol",
    "market_list",
    "market_ticker",
    "order_get",
    "order_list",
    "tier_get_by_slug",
    "tier_list",
    "tier_price_index",
    "tier_price_index_history",
    "tier_price_index_list",
    "trade_list_for_org",
    "trade_list_recent",
    "vwap_micro",
]
