"""The marketplace's writes. Import from here; the submodules are an implementation detail."""

from marketplace.services.endpoints import endpoint_register, endpoint_suspend, endpoint_verify
from marketplace.services.markets import market_close, market_halt, market_resume
from marketplace.services.orders import (
    order_cancel,
    order_cancel_all,
    order_place,
    order_reduce,
)
from marketplace.services.previews import OrderPreview, order_preview

__all__ = [
    "OrderPreview",
    "endpoint_register",
    "endpoint_suspend",
    "endpoint_verify",
    "market_close",
    "market_halt",
    "market_resume",
    "order_cancel",
    "order_cancel_all",
    "order_place",
    "order_preview",
    "order_reduce",
]
