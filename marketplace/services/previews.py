"""The order preview: what placing an order now would hold, cost and fill. Writes nothing.

The fill is walked by the matching core over the resting (open) orders read from the database,
so self-trade prevention, FOK and post-only behave exactly as the engine would apply them.
"""

from dataclasses import dataclass

from accounts.principal import Principal
from core.units import bp_floor, div_floor
from marketplace import matching
from marketplace.models import Market, Order
from marketplace.services.order_rules import (
    bid_hold_micro,
    market_for_order,
    order_check,
    tif_or_default,
)

Side = Order.Side
Status = Order.Status
Stp = Order.SelfTradePrevention
Tif = Order.TimeInForce
Type = Order.Type


@dataclass(frozen=True)
class OrderPreview:
    """What placing an order now would hold, cost and fill, from the book as it stands."""

    market: Market
    side: str
    type: str
    tif: str
    price_micro: int | None
    lots: int
    hold_micro: int
    fee_bp: int
    fee_micro: int
    fill_lots: int
    fill_notional_micro: int
    fill_average_price_micro: int | None
    resting_lots: int
    reject_reason: str | None


def _book_for(market: Market, *, side: str, price_micro: int | None) -> matching.OrderBook:
    """The resting orders an incoming order on `side` could meet, as a matching-core book."""
    opposite = Side.SELL if side == Side.BUY else Side.BUY
    resting = Order.objects.filter(market=market, side=opposite, status=Status.OPEN)
    # Only the levels a limit order could reach matter, for the fill and for post-only alike.
    if price_micro is not None and side == Side.BUY:
        resting = resting.filter(price_micro__lte=price_micro)
    elif price_micro is not None:
        resting = resting.filter(price_micro__gte=price_micro)
    book = matching.OrderBook()
    rows = resting.order_by("sequence").values_list(
        "id", "org_id", "side", "price_micro", "lots", "filled_lots"
    )
    for order_id, org_id, row_side, row_price, row_lots, row_filled in rows:
        book.load_resting(
            matching.Order(
                id=order_id,
                org=org_id,
                side=row_side,
                type=matching.LIMIT,
                price_ticks=row_price // market.tick_micro,
                lots=row_lots - row_filled,
            )
        )
    return book


def order_preview(
    *,
    principal: Principal,
    market_id: int,
    side: str,
    type: str = Type.LIMIT,  # the order's type, as the API names it
    tif: str | None = None,
    price_micro: int | None = None,
    lots: int,
    post_only: bool = False,
    stp: str = Stp.EXPIRE_TAKER,
) -> OrderPreview:
    """Validate an order and walk the current book with it; writes nothing.

    The fee is the taker fee on the expected fill, rounded down as trades round it. Orders
    still pending are not on the book yet, so the fill is what the book offers right now.
    """
    tif = tif_or_default(type, tif)
    market = market_for_order(market_id)
    order_check(
        org=principal.org,
        market=market,
        side=side,
        order_type=type,
        tif=tif,
        price_micro=price_micro,
        lots=lots,
        post_only=post_only,
        stp=stp,
    )
    book = _book_for(market, side=side, price_micro=price_micro)
    result = book.preview(
        matching.Order(
            id=None,
            org=principal.org.id,
            side=side,
            type=type,
            price_ticks=None if price_micro is None else price_micro // market.tick_micro,
            lots=lots,
            tif=tif,
            post_only=post_only,
            stp=stp,
        )
    )
    tick_notional_micro = market.notional_micro(lots=1, price_micro=market.tick_micro)
    notional_micro = result.notional * tick_notional_micro
    average_micro = None
    if result.lots:
        average_micro, _ = div_floor(result.notional * market.tick_micro, result.lots)
    rests = type == Type.LIMIT and tif == Tif.GTC and result.reject_reason is None
    return OrderPreview(
        market=market,
        side=side,
        type=type,
        tif=tif,
        price_micro=price_micro,
        lots=lots,
        hold_micro=bid_hold_micro(market, side=side, price_micro=price_micro, lots=lots),
        fee_bp=market.taker_fee_bp,
        fee_micro=bp_floor(notional_micro, market.taker_fee_bp),
        fill_lots=result.lots,
        fill_notional_micro=notional_micro,
        fill_average_price_micro=average_micro,
        resting_lots=lots - result.lots if rests else 0,
        reject_reason=result.reject_reason,
    )
