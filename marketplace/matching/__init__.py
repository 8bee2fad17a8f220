"""The order matching core: one `OrderBook` per instrument, plain Python, no Django.

See `marketplace.matching.book` for the matching model and `marketplace.matching.replay` for the
JSON-lines command runner.
"""

from marketplace.matching.book import (
    BUY,
    EXPIRE_BOTH,
    EXPIRE_MAKER,
    EXPIRE_TAKER,
    FOK,
    GTC,
    IOC,
    LIMIT,
    MARKET,
    SELL,
    STP_NONE,
    Accepted,
    Cancelled,
    Event,
    Expired,
    Order,
    OrderBook,
    Preview,
    Reduced,
    Rejected,
    RestingOrder,
    Trade,
)

__all__ = [
    "BUY",
    "EXPIRE_BOTH",
    "EXPIRE_MAKER",
    "EXPIRE_TAKER",
    "FOK",
    "GTC",
    "IOC",
    "LIMIT",
    "MARKET",
    "SELL",
    "STP_NONE",
    "Accepted",
    "Cancelled",
    "Event",
    "Expired",
    "Order",
    "OrderBook",
    "Preview",
    "Reduced",
    "Rejected",
    "RestingOrder",
    "Trade",
]
