"""The rules an order must pass before anything is written, shared by placing and previewing.

`order_check` raises the first rule an order breaks, each with its own error code; the book, the
org's funds and a provider's capacity are not looked at there. `bid_hold_micro` is the collateral
a bid sets aside, `ask_capacity_check` the limit on what a provider may offer.
"""

from django.db.models import F, Sum

from accounts.models import Org
from core import locks
from core.units import div_floor, money_format
from marketplace.errors import (
    CapacityExceeded,
    InvalidOrder,
    LotsAboveMax,
    LotsBelowMin,
    MarketClosed,
    MarketHalted,
    NotABuyer,
    NotASeller,
    NoVerifiedEndpoint,
    PostOnlyMarketOrder,
    PriceOffTick,
    PriceOutsideBand,
)
from marketplace.models import Market, Order
from marketplace.selectors.listing import market_get
from settlement.selectors import entitlement_undelivered_tokens

Side = Order.Side
Type = Order.Type
Tif = Order.TimeInForce
Stp = Order.SelfTradePrevention
Status = Order.Status


def market_for_order(market_id: int) -> Market:
    return market_get(market_id=market_id)


def tif_or_default(order_type: str, tif: str | None) -> str:
    if tif is not None:
        return tif
    return Tif.IOC if order_type == Type.MARKET else Tif.GTC


# The choice fields' values, and the error naming them, computed once (an enum's `values` is
# built anew on every read).
_CHOICES = {"side": Side, "type": Type, "tif": Tif, "stp": Stp}
_CHOICE_VALUES = {name: frozenset(choices.values) for name, choices in _CHOICES.items()}
_CHOICE_ERRORS = {
    name: f"Not one of {', '.join(choices.values)}." for name, choices in _CHOICES.items()
}


def order_check(
    *,
    org: Org,
    market: Market,
    side: str,
    order_type: str,
    tif: str,
    price_micro: int | None,
    lots: int,
    post_only: bool,
    stp: str,
) -> None:
    """Raise the first rule the order breaks; the book, funds and capacity are not looked at."""
    if market.status == Market.Status.HALTED:
        raise MarketHalted()
    if market.status == Market.Status.CLOSED:
        raise MarketClosed()
    unknown = {
        name: [_CHOICE_ERRORS[name]]
        for name, value in (("side", side), ("type", order_type), ("tif", tif), ("stp", stp))
        if value not in _CHOICE_VALUES[name]
    }
    if unknown:
        raise InvalidOrder(fields=unknown)
    if order_type == Type.MARKET:
        if post_only:
            raise PostOnlyMarketOrder(fields={"post_only": ["Only for GTC limit orders."]})
        if price_micro is not None:
            raise InvalidOrder(fields={"price": ["A market order has no price."]})
        if tif == Tif.GTC:
            raise InvalidOrder(fields={"tif": ["A market order is IOC or FOK."]})
    else:
        if price_micro is None:
            raise InvalidOrder(fields={"price": ["A limit order needs a price."]})
        if post_only and tif != Tif.GTC:
            raise InvalidOrder(fields={"post_only": ["Only for GTC limit orders."]})
    if side == Side.BUY and not org.is_buyer:
        raise NotABuyer()
    if side == Side.SELL and not org.is_provider:
        raise NotASeller()
    if price_micro is not None:
        if price_micro % market.tick_micro:
            raise PriceOffTick(
                fields={"price": [f"A multiple of {money_format(market.tick_micro)}."]}
            )
        low, high = market.band_low_micro, market.band_high_micro
        if not low <= price_micro <= high:
            raise PriceOutsideBand(
                fields={"price": [f"Between {money_format(low)} and {money_format(high)}."]}
            )
    if lots < market.min_lots:
        raise LotsBelowMin(fields={"lots": [f"At least {market.min_lots}."]})
    if lots > market.max_lots:
        raise LotsAboveMax(fields={"lots": [f"At most {market.max_lots}."]})


def hold_price_micro(market: Market, price_micro: int | None) -> int:
    """The price a bid is collateralised at: its limit, or for a market bid the band's top."""
    return market.band_high_micro if price_micro is None else price_micro


def bid_hold_micro(market: Market, *, side: str, price_micro: int | None, lots: int) -> int:
    if side != Side.BUY:
        return 0
    return market.bid_hold_micro(lots=lots, price_micro=hold_price_micro(market, price_micro))


def verified_capacity_tokens(endpoints, market: Market) -> int:
    """What the provider's verified endpoints can deliver over the market's delivery window."""
    daily = sum(endpoint.capacity_tokens_per_day for endpoint in endpoints if endpoint.is_verified)
    return daily * market.delivery_days


def committed_ask_tokens(*, org_id: int, market: Market) -> int:
    """Tokens the provider has offered (live asks) or sold and not yet delivered in a market."""
    # Asks first, then what they sold: a match committing in between is then counted twice
    # (refusing an ask that might have fitted) rather than not at all (overselling).
    open_lots = (
        Order.objects.filter(
            org_id=org_id, market=market, side=Side.SELL, status__in=Order.LIVE_STATUSES
        ).aggregate(lots=Sum(F("lots") - F("filled_lots")))["lots"]
        or 0
    )
    sold_tokens = entitlement_undelivered_tokens(provider_org_id=org_id, market_id=market.id)
    return open_lots * market.lot_tokens + sold_tokens


def ask_capacity_check(*, org_id: int, market: Market, lots: int) -> None:
    """Refuse an ask that would sell more than the provider's verified capacity can deliver.

    Runs under the lock on the provider's endpoints in this market, so its asks there are
    checked one at a time.
    """
    endpoints = locks.provider_endpoints_for_update(org_id=org_id, market_id=market.id)
    if not any(endpoint.is_verified for endpoint in endpoints):
        raise NoVerifiedEndpoint()
    capacity_tokens = verified_capacity_tokens(endpoints, market)
    committed_tokens = committed_ask_tokens(org_id=org_id, market=market)
    if committed_tokens + lots * market.lot_tokens > capacity_tokens:
        room_lots, _ = div_floor(max(0, capacity_tokens - committed_tokens), market.lot_tokens)
        raise CapacityExceeded(
            f"Verified capacity over {market.delivery_days} days is {capacity_tokens} tokens; "
            f"{committed_tokens} are already offered or sold.",
            fields={"lots": [f"At most {room_lots} more lots."]},
        )
