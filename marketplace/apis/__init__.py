"""REST endpoints for markets, orders and provider endpoints.

Prices are decimal strings of USD per 1M billable tokens ("5.000000"); money is a decimal USD
string; lots and tokens are integers. A market is named by its symbol ("FRONTIER-EU").
"""

from marketplace.apis.endpoints import EndpointCollectionApi
from marketplace.apis.marketdata import (
    MarketBookApi,
    MarketCandleListApi,
    MarketTickerApi,
    MarketTradeListApi,
    TierIndexHistoryApi,
    TierIndexListApi,
    TradeListApi,
)
from marketplace.apis.markets import MarketDetailApi, MarketListApi
from marketplace.apis.orders import (
    OrderCancelAllApi,
    OrderCancelApi,
    OrderCollectionApi,
    OrderDetailApi,
    OrderPreviewApi,
    OrderReduceApi,
)

__all__ = [
    "EndpointCollectionApi",
    "MarketBookApi",
    "MarketCandleListApi",
    "MarketDetailApi",
    "MarketListApi",
    "MarketTickerApi",
    "MarketTradeListApi",
    "OrderCancelAllApi",
    "OrderCancelApi",
    "OrderCollectionApi",
    "OrderDetailApi",
    "OrderPreviewApi",
    "OrderReduceApi",
    "TierIndexHistoryApi",
    "TierIndexListApi",
    "TradeListApi",
]
