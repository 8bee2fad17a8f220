"""Portal pages for trading: the markets, one market's page (contract, charts, order ticket) and
the member's orders, trades and entitlements in it.

The ticket calls order_preview and order_place, as the member's Principal, exactly as the REST
API does; whatever those refuse comes back on the form, field by field. The charts read a JSON
endpoint of this module, fed by the market-data selectors.
"""

import uuid
from datetime import UTC

from django.contrib import messages
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from core.errors import ApplicationError, IdempotencyKeyReused
from core.units import money_display, money_format
from marketplace import selectors as market_selectors
from marketplace.errors import MarketNotFound, OrderNotFound, OrderNotLive
from marketplace.models import Market, Order
from marketplace.services import order_cancel, order_place, order_preview
from portal.forms import OrderTicketForm, form_apply_error, price_input_text
from portal.views.access import is_htmx, may_trade, member_required, principal_for, refuse
from settlement.models import LedgerAccount
from settlement.selectors import account_balance, entitlement_list

TRADING_REFUSED = "Your role can see the markets but not trade. Ask a trader, admin or owner."
DEPTH_LEVELS = 50
DEPTH_CURVE_POINTS = 200  # the depth chart samples the book on at most this many prices
CHART_INTERVALS = list(market_selectors.INTERVALS)  # 1m, 5m, 1h, 1d
DEFAULT_CHART_INTERVAL = "1h"
CANDLE_LIMIT = 300
MY_ROWS = 20

Side = Order.Side


def _market_or_404(symbol: str) -> Market:
    try:
        return market_selectors.market_get_by_symbol(symbol=symbol)
    except MarketNotFound:
        raise Http404("No such market.") from None


# The markets list


@member_required
def markets(request):
    rows = [
        {"market": market, "ticker": market_selectors.market_ticker(market=market)}
        for market in market_selectors.market_list()
    ]
    return render(request, "portal/markets.html", {"rows": rows})


# One market


def _ticket(request, market: Market, data=None) -> OrderTicketForm:
    org = request.active_membership.org
    side = Side.SELL if org.is_provider and not org.is_buyer else Side.BUY
    return OrderTicketForm(
        data,
        initial={
            "side": side,
            "price": price_input_text(market.reference_price_micro),
            "lots": market.min_lots,
            "idempotency_key": uuid.uuid4(),
        },
    )


def _activity_context(request, market: Market) -> dict:
    """The member's live orders, trades and contracts in `market`: the polled panel."""
    org = request.active_membership.org
    live_orders = market_selectors.order_list(
        org_id=org.id, market_id=market.id, status=list(Order.LIVE_STATUSES)
    )
    trades = market_selectors.trade_list_for_org(org_id=org.id, market_id=market.id)[:MY_ROWS]
    context = {
        "market": market,
        "live_orders": live_orders,
        "trades": trades,
        "may_trade": may_trade(request),
        "bought": None,
        "sold": None,
    }
    if org.is_buyer:
        context["bought"] = entitlement_list(org_id=org.id, role="buyer", market_id=market.id)[
            :MY_ROWS
        ]
    if org.is_provider:
        context["sold"] = entitlement_list(org_id=org.id, role="provider", market_id=market.id)[
            :MY_ROWS
        ]
    return context


def _market_context(request, market: Market, form: OrderTicketForm) -> dict:
    org_id = request.active_membership.org_id
    return {
        "market": market,
        "ticker": market_selectors.market_ticker(market=market),
        "form": form if may_trade(request) else None,
        "available_micro": account_balance(org_id=org_id, kind=LedgerAccount.Kind.AVAILABLE),
        "intervals": CHART_INTERVALS,
        "default_interval": DEFAULT_CHART_INTERVAL,
        **_activity_context(request, market),
    }


@never_cache  # going back to the page draws a fresh idempotency key
@member_required
def market_detail(request, symbol: str):
    market = _market_or_404(symbol)
    return render(
        request, "portal/market.html", _market_context(request, market, _ticket(request, market))
    )


@never_cache
@member_required
def market_activity(request, symbol: str):
    """The member's orders, trades and contracts alone; HTMX redraws it every few seconds."""
    market = _market_or_404(symbol)
    return render(request, "portal/_market_activity.html", _activity_context(request, market))


@require_POST
@member_required
def order_ticket_preview(request, symbol: str):
    """What the ticket would hold, cost and fill now (order_preview); writes nothing."""
    market = _market_or_404(symbol)
    form = _ticket(request, market, request.POST)
    preview = None
    if form.is_valid():
        try:
            preview = order_preview(
                principal=principal_for(request), market_id=market.id, **form.service_fields()
            )
        except ApplicationError as error:
            form_apply_error(form, error)
    return render(
        request, "portal/_ticket_preview.html", {"form": form, "preview": preview, "market": market}
    )


@require_POST
@member_required
def order_ticket_submit(request, symbol: str):
    market = _market_or_404(symbol)
    if not may_trade(request):
        return refuse(request, TRADING_REFUSED)
    form = _ticket(request, market, request.POST)
    if form.is_valid():
        key = form.cleaned_data["idempotency_key"]
        try:
            order = order_place(
                principal=principal_for(request),
                market_id=market.id,
                idempotency_key=f"portal-{key}" if key else None,
                **form.service_fields(),
            )
        except IdempotencyKeyReused:
            # The first submit of this ticket placed another order; a new key places this one.
            form.data = form.data.copy()
            form.data["idempotency_key"] = str(uuid.uuid4())
            form.add_error(None, "This ticket was already used for another order. Check it.")
        except ApplicationError as error:
            form_apply_error(form, error)
        else:
            messages.success(request, _placed_message(order))
            return redirect("portal:market", symbol=market.symbol)
    return render(request, "portal/market.html", _market_context(request, market, form))


def _placed_message(order: Order) -> str:
    what = "Bid" if order.is_bid else "Ask"
    price = "at market" if order.price_micro is None else f"at {money_display(order.price_micro)}"
    return f"{what} #{order.id} for {order.lots} lots {price} is placed."


@require_POST
@member_required
def order_cancel_view(request, order_id: int):
    if not may_trade(request):
        return refuse(request, TRADING_REFUSED)
    org_id = request.active_membership.org_id
    try:
        order = order_cancel(principal=principal_for(request), order_id=order_id)
    except OrderNotFound:
        raise Http404("No such order.") from None
    except OrderNotLive as error:
        # Filled or cancelled meanwhile (by the engine or another tab): say so, change nothing.
        order = market_selectors.order_get(org_id=org_id, order_id=order_id)
        notice, level = error.message, messages.WARNING
    else:
        notice, level = f"Order #{order.id} is cancelled.", messages.SUCCESS
    if is_htmx(request):
        context = _activity_context(request, order.market)
        context["notice"] = {"text": notice, "level": messages.DEFAULT_TAGS[level]}
        return render(request, "portal/_market_activity.html", context)
    messages.add_message(request, level, notice)
    return redirect("portal:market", symbol=order.market.symbol)


# Chart data


def _depth_curve(depth, market: Market) -> list[dict]:
    """The book as cumulative lots on a grid of prices, bids below the spread, asks above.

    The grid steps by whole ticks, so the chart's horizontal axis is proportional to price.
    """
    prices = [level.price_micro for level in depth.bids + depth.asks]
    if not prices:
        return []
    low, high = min(prices), max(prices)
    span_ticks = (high - low) // market.tick_micro
    step = market.tick_micro * max(1, -(-span_ticks // DEPTH_CURVE_POINTS))
    best_bid = depth.bids[0].price_micro if depth.bids else None
    best_ask = depth.asks[0].price_micro if depth.asks else None
    points = []
    for price in range(low, high + 1, step):
        bid_lots = sum(level.lots for level in depth.bids if level.price_micro >= price)
        ask_lots = sum(level.lots for level in depth.asks if level.price_micro <= price)
        points.append(
            {
                "price": money_format(price),
                "bid_lots": bid_lots if best_bid is not None and price <= best_bid else None,
                "ask_lots": ask_lots if best_ask is not None and price >= best_ask else None,
            }
        )
    return points


@never_cache
@member_required
def market_chart_data(request, symbol: str):
    """Candles (OHLCV) and the depth curve of a market, as JSON for the page's charts."""
    market = _market_or_404(symbol)
    interval = request.GET.get("interval", DEFAULT_CHART_INTERVAL)
    if interval not in CHART_INTERVALS:
        return JsonResponse(
            {"error": {"code": "invalid", "message": f"interval is one of {CHART_INTERVALS}."}},
            status=400,
        )
    candles = market_selectors.market_candles(market=market, interval=interval, limit=CANDLE_LIMIT)
    depth = market_selectors.book_depth(market=market, levels=DEPTH_LEVELS)
    return JsonResponse(
        {
            "market": market.symbol,
            "interval": interval,
            "tick": money_format(market.tick_micro),
            "candles": [
                {
                    "time": int(candle.start.astimezone(UTC).timestamp()),
                    "open": money_format(candle.open_micro),
                    "high": money_format(candle.high_micro),
                    "low": money_format(candle.low_micro),
                    "close": money_format(candle.close_micro),
                    "volume_lots": candle.volume_lots,
                }
                for candle in candles
            ],
            "depth": _depth_curve(depth, market),
        }
    )
