"""Market data: book depth, recent trades, candles, the ticker and the tier price indexes (public),
and the caller org's own trades (scope read).

Everything is read from the database (marketplace.selectors), never from the engine's memory.
Prices are decimal strings of USD per 1M billable tokens; averages are rounded down.
"""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Scope
from core.api import CreatedAtCursorPagination, MoneyField
from marketplace import selectors
from marketplace.apis.wire import PRICE_HELP
from marketplace.models import Side

INTERVAL_CHOICES = list(selectors.INTERVALS)
VWAP_HELP = "Volume-weighted average price per 1M billable tokens, rounded down."

SYMBOL_PARAMETER = OpenApiParameter(
    "symbol", str, location=OpenApiParameter.PATH, description='Market symbol, e.g. "FRONTIER-EU".'
)


def _interval_parameter() -> OpenApiParameter:
    return OpenApiParameter(
        "interval",
        str,
        enum=INTERVAL_CHOICES,
        required=True,
        description="Bucket width; buckets are aligned to UTC.",
    )


_WINDOW_PARAMETERS = [
    OpenApiParameter(
        "start", OpenApiTypes.DATETIME, description="First bucket start wanted (ISO 8601)."
    ),
    OpenApiParameter("end", OpenApiTypes.DATETIME, description="Buckets starting before this."),
    OpenApiParameter(
        "limit",
        int,
        description=(
            f"Up to {selectors.MAX_BUCKETS}; default {selectors.DEFAULT_BUCKETS}. With start, "
            "the first buckets from it; without, the latest."
        ),
    ),
]


class BucketWindowSerializer(serializers.Serializer):
    """The query of a bucketed series: interval, an optional [start, end) window and a limit."""

    interval = serializers.ChoiceField(choices=INTERVAL_CHOICES)
    start = serializers.DateTimeField(required=False)
    end = serializers.DateTimeField(required=False)
    limit = serializers.IntegerField(
        required=False,
        min_value=1,
        max_value=selectors.MAX_BUCKETS,
        default=selectors.DEFAULT_BUCKETS,
    )

    def validate(self, data):
        if "start" in data and "end" in data and data["start"] >= data["end"]:
            raise serializers.ValidationError({"start": ["Must be before end."]})
        return data


def _validated(serializer_class, request) -> dict:
    query = serializer_class(data=request.query_params)
    query.is_valid(raise_exception=True)
    return query.validated_data


class BookLevelSerializer(serializers.Serializer):
    price = MoneyField(source="price_micro", help_text=PRICE_HELP)
    lots = serializers.IntegerField(help_text="Resting lots at this price.")
    orders = serializers.IntegerField(help_text="Resting orders at this price.")


class MarketBookApi(APIView):
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        levels = serializers.IntegerField(required=False, min_value=1, max_value=100, default=20)

    class OutputSerializer(serializers.Serializer):
        market = serializers.CharField(source="market.symbol")
        bids = BookLevelSerializer(many=True, help_text="Best (highest) first.")
        asks = BookLevelSerializer(many=True, help_text="Best (lowest) first.")

    @extend_schema(
        operation_id="markets_book",
        parameters=[
            SYMBOL_PARAMETER,
            OpenApiParameter("levels", int, description="Price levels per side, 1-100; 20."),
        ],
        responses=OutputSerializer,
        tags=["market data"],
        auth=[],
        description="Resting lots per price level on each side of the book.",
        examples=[
            OpenApiExample(
                "A book",
                value={
                    "market": "FRONTIER-EU",
                    "bids": [{"price": "4.990000", "lots": 30, "orders": 2}],
                    "asks": [{"price": "5.010000", "lots": 12, "orders": 1}],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, symbol: str):
        query = _validated(self.InputSerializer, request)
        market = selectors.market_get_by_symbol(symbol=symbol)
        depth = selectors.book_depth(market=market, levels=query["levels"])
        return Response(self.OutputSerializer(depth).data)


class MarketTradeListApi(APIView):
    permission_classes = [AllowAny]

    class InputSerializer(serializers.Serializer):
        limit = serializers.IntegerField(
            required=False, min_value=1, max_value=selectors.MAX_RECENT_TRADES, default=50
        )

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        price = MoneyField(source="price_micro", help_text=PRICE_HELP)
        lots = serializers.IntegerField()
        tokens = serializers.IntegerField(help_text="Billable tokens.")
        notional = MoneyField(source="notional_micro")
        side = serializers.ChoiceField(
            source="taker_side",
            choices=Side.choices,
            help_text="The taker's side: buy when a bid took an ask, sell when an ask took a bid.",
        )
        created_at = serializers.DateTimeField()

    @extend_schema(
        operation_id="markets_trades",
        parameters=[
            SYMBOL_PARAMETER,
            OpenApiParameter(
                "limit", int, description=f"Up to {selectors.MAX_RECENT_TRADES}; default 50."
            ),
        ],
        responses=OutputSerializer(many=True),
        tags=["market data"],
        auth=[],
        description="The market's latest trades, newest first.",
        examples=[
            OpenApiExample(
                "A trade",
                value={
                    "id": 981,
                    "price": "5.010000",
                    "lots": 4,
                    "tokens": 4000000,
                    "notional": "20.040000",
                    "side": "buy",
                    "created_at": "2026-01-01T12:00:00Z",
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, symbol: str):
        query = _validated(self.InputSerializer, request)
        market = selectors.market_get_by_symbol(symbol=symbol)
        trades = selectors.trade_list_recent(market=market, limit=query["limit"])
        return Response(self.OutputSerializer(trades, many=True).data)


class CandleSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="The bucket's start, UTC.")
    open = MoneyField(source="open_micro")
    high = MoneyField(source="high_micro")
    low = MoneyField(source="low_micro")
    close = MoneyField(source="close_micro")
    volume_lots = serializers.IntegerField()
    volume_tokens = serializers.IntegerField(help_text="Billable tokens.")
    notional = MoneyField(source="notional_micro")
    trade_count = serializers.IntegerField()


class MarketCandleListApi(APIView):
    permission_classes = [AllowAny]

    class InputSerializer(BucketWindowSerializer):
        pass

    class OutputSerializer(serializers.Serializer):
        market = serializers.CharField()
        interval = serializers.ChoiceField(choices=INTERVAL_CHOICES)
        candles = CandleSerializer(many=True, help_text="Oldest first; empty buckets left out.")

    @extend_schema(
        operation_id="markets_candles",
        parameters=[SYMBOL_PARAMETER, _interval_parameter(), *_WINDOW_PARAMETERS],
        responses=OutputSerializer,
        tags=["market data"],
        auth=[],
        description=(
            "OHLCV candles from the market's trades. Prices are per 1M billable tokens; "
            "buckets without trades are left out."
        ),
        examples=[
            OpenApiExample(
                "Hourly candles",
                value={
                    "market": "FRONTIER-EU",
                    "interval": "1h",
                    "candles": [
                        {
                            "start": "2026-01-01T12:00:00Z",
                            "open": "5.000000",
                            "high": "5.100000",
                            "low": "4.950000",
                            "close": "5.050000",
                            "volume_lots": 40,
                            "volume_tokens": 40000000,
                            "notional": "201.500000",
                            "trade_count": 7,
                        }
                    ],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, symbol: str):
        query = _validated(self.InputSerializer, request)
        market = selectors.market_get_by_symbol(symbol=symbol)
        candles = selectors.market_candles(market=market, **query)
        series = {"market": market.symbol, "interval": query["interval"], "candles": candles}
        return Response(self.OutputSerializer(series).data)


class MarketTickerApi(APIView):
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        market = serializers.CharField(source="market.symbol")
        window_start = serializers.DateTimeField()
        window_end = serializers.DateTimeField()
        last_price = MoneyField(
            source="last_price_micro", allow_null=True, help_text="The last trade ever."
        )
        open_price = MoneyField(
            source="open_price_micro", allow_null=True, help_text="The window's first trade."
        )
        change = MoneyField(source="change_micro", allow_null=True, help_text="Last - open.")
        change_bp = serializers.IntegerField(
            allow_null=True, help_text="Change over open in bp, rounded toward zero."
        )
        high = MoneyField(source="high_micro", allow_null=True)
        low = MoneyField(source="low_micro", allow_null=True)
        volume_lots = serializers.IntegerField()
        volume_tokens = serializers.IntegerField(help_text="Billable tokens.")
        notional = MoneyField(source="notional_micro")
        vwap = MoneyField(source="vwap_micro", allow_null=True, help_text=VWAP_HELP)
        trade_count = serializers.IntegerField()
        best_bid = MoneyField(source="best_bid_micro", allow_null=True)
        best_ask = MoneyField(source="best_ask_micro", allow_null=True)

    @extend_schema(
        operation_id="markets_ticker",
        parameters=[SYMBOL_PARAMETER],
        responses=OutputSerializer,
        tags=["market data"],
        auth=[],
        description="The last 24 hours of the market's trades, and its best prices now.",
        examples=[
            OpenApiExample(
                "A ticker",
                value={
                    "market": "FRONTIER-EU",
                    "window_start": "2026-01-01T12:00:00Z",
                    "window_end": "2026-01-02T12:00:00Z",
                    "last_price": "5.050000",
                    "open_price": "5.000000",
                    "change": "0.050000",
                    "change_bp": 100,
                    "high": "5.100000",
                    "low": "4.950000",
                    "volume_lots": 40,
                    "volume_tokens": 40000000,
                    "notional": "201.500000",
                    "vwap": "5.037500",
                    "trade_count": 7,
                    "best_bid": "5.040000",
                    "best_ask": "5.060000",
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, symbol: str):
        market = selectors.market_get_by_symbol(symbol=symbol)
        ticker = selectors.market_ticker(market=market)
        return Response(self.OutputSerializer(ticker).data)


class IndexComponentSerializer(serializers.Serializer):
    market = serializers.CharField(source="market.symbol")
    region = serializers.CharField(source="market.region.code")
    vwap = MoneyField(source="vwap_micro", allow_null=True, help_text=VWAP_HELP)
    volume_tokens = serializers.IntegerField(help_text="Billable tokens.")
    notional = MoneyField(source="notional_micro")
    trade_count = serializers.IntegerField()
    weight_bp = serializers.IntegerField(help_text="Share of the tier's tokens, rounded down.")


INDEX_EXAMPLE = {
    "tier": "frontier",
    "name": "Frontier",
    "window_start": "2026-01-01T12:00:00Z",
    "window_end": "2026-01-02T12:00:00Z",
    "price": "5.025000",
    "volume_tokens": 80000000,
    "notional": "402.000000",
    "trade_count": 12,
    "components": [
        {
            "market": "FRONTIER-EU",
            "region": "eu",
            "vwap": "5.000000",
            "volume_tokens": 40000000,
            "notional": "200.000000",
            "trade_count": 5,
            "weight_bp": 5000,
        },
        {
            "market": "FRONTIER-US",
            "region": "us",
            "vwap": "5.050000",
            "volume_tokens": 40000000,
            "notional": "202.000000",
            "trade_count": 7,
            "weight_bp": 5000,
        },
    ],
}


class TierIndexListApi(APIView):
    permission_classes = [AllowAny]

    class OutputSerializer(serializers.Serializer):
        tier = serializers.CharField(source="tier.slug")
        name = serializers.CharField(source="tier.name")
        window_start = serializers.DateTimeField()
        window_end = serializers.DateTimeField()
        price = MoneyField(
            source="price_micro",
            allow_null=True,
            help_text="VWAP across the tier's markets, per 1M billable tokens, rounded down; "
            "null when nothing traded in the window.",
        )
        volume_tokens = serializers.IntegerField(help_text="Billable tokens.")
        notional = MoneyField(source="notional_micro")
        trade_count = serializers.IntegerField()
        components = IndexComponentSerializer(many=True, help_text="One per market of the tier.")

    @extend_schema(
        operation_id="index_list",
        responses=OutputSerializer(many=True),
        tags=["market data"],
        auth=[],
        description=(
            "Each tier's token price index over the last 24 hours: sum of notional / sum of "
            "billable tokens over the trades of all the tier's markets, so each region weighs "
            "in by the tokens it traded."
        ),
        examples=[OpenApiExample("An index", value=INDEX_EXAMPLE, response_only=True)],
    )
    def get(self, request):
        indexes = selectors.tier_price_index_list()
        return Response(self.OutputSerializer(indexes, many=True).data)


class IndexPointSerializer(serializers.Serializer):
    start = serializers.DateTimeField(help_text="The bucket's start, UTC.")
    price = MoneyField(source="price_micro", help_text=VWAP_HELP)
    volume_tokens = serializers.IntegerField(help_text="Billable tokens.")
    notional = MoneyField(source="notional_micro")
    trade_count = serializers.IntegerField()


class TierIndexHistoryApi(APIView):
    permission_classes = [AllowAny]

    class InputSerializer(BucketWindowSerializer):
        pass

    class OutputSerializer(serializers.Serializer):
        tier = serializers.CharField()
        interval = serializers.ChoiceField(choices=INTERVAL_CHOICES)
        points = IndexPointSerializer(many=True, help_text="Oldest first; empty buckets left out.")

    @extend_schema(
        operation_id="index_history",
        parameters=[
            OpenApiParameter(
                "tier", str, location=OpenApiParameter.PATH, description='Tier slug ("frontier").'
            ),
            _interval_parameter(),
            *_WINDOW_PARAMETERS,
        ],
        responses=OutputSerializer,
        tags=["market data"],
        auth=[],
        description=(
            "The tier's index per bucket: the VWAP of the trades of all its markets in the "
            "bucket. Buckets without trades are left out; oldest first."
        ),
        examples=[
            OpenApiExample(
                "Daily index",
                value={
                    "tier": "frontier",
                    "interval": "1d",
                    "points": [
                        {
                            "start": "2026-01-01T00:00:00Z",
                            "price": "5.025000",
                            "volume_tokens": 80000000,
                            "notional": "402.000000",
                            "trade_count": 12,
                        }
                    ],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request, tier: str):
        query = _validated(self.InputSerializer, request)
        model_tier = selectors.tier_get_by_slug(slug=tier)
        points = selectors.tier_price_index_history(tier=model_tier, **query)
        series = {"tier": model_tier.slug, "interval": query["interval"], "points": points}
        return Response(self.OutputSerializer(series).data)


class TradeListApi(APIView):
    """The caller org's trades, as buyer or seller (scope read)."""

    required_scope = Scope.READ
    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    class FilterSerializer(serializers.Serializer):
        market = serializers.CharField(required=False, max_length=32)
        side = serializers.ChoiceField(choices=Side.choices, required=False)

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        market = serializers.CharField(source="market.symbol")
        side = serializers.ChoiceField(
            source="org_side", choices=Side.choices, help_text="Your side of the trade."
        )
        liquidity = serializers.SerializerMethodField(help_text="maker or taker, for you.")
        price = MoneyField(source="price_micro", help_text=PRICE_HELP)
        lots = serializers.IntegerField()
        tokens = serializers.IntegerField(help_text="Billable tokens.")
        notional = MoneyField(source="notional_micro")
        fee = MoneyField(
            source="org_fee_micro",
            allow_null=True,
            help_text="The fee you paid at the trade as buyer; null for sells, whose fee is "
            "charged on delivery at seller_fee_bp.",
        )
        seller_fee_bp = serializers.IntegerField()
        order_id = serializers.SerializerMethodField(help_text="Your order in this trade.")
        created_at = serializers.DateTimeField()

        def get_liquidity(self, trade) -> str:
            return "taker" if trade.org_side == trade.taker_side else "maker"

        def get_order_id(self, trade) -> int:
            if trade.org_side == trade.taker_side:
                return trade.taker_order_id
            return trade.maker_order_id

    @extend_schema(
        operation_id="trades_list",
        parameters=[
            OpenApiParameter("market", str, description="Market symbol."),
            OpenApiParameter("side", str, enum=Side.values, description="Your side."),
            OpenApiParameter("cursor", str, description="From the previous page's next link."),
            OpenApiParameter("page_size", int, description="Up to 500; default 50."),
        ],
        responses=OutputSerializer(many=True),
        tags=["orders"],
        examples=[
            OpenApiExample(
                "A bought trade",
                value={
                    "id": 981,
                    "market": "FRONTIER-EU",
                    "side": "buy",
                    "liquidity": "taker",
                    "price": "5.010000",
                    "lots": 4,
                    "tokens": 4000000,
                    "notional": "20.040000",
                    "fee": "0.050100",
                    "seller_fee_bp": 10,
                    "order_id": 42,
                    "created_at": "2026-01-01T12:00:00Z",
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        wanted = _validated(self.FilterSerializer, request)
        trades = selectors.trade_list_for_org(
            org_id=request.auth.org.id,
            market_symbol=wanted.get("market"),
            side=wanted.get("side"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(trades, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)
