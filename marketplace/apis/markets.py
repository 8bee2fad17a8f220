"""Public market data endpoints: the markets and their contract specs."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api import MoneyField
from marketplace import selectors
from marketplace.apis.wire import PRICE_HELP
from marketplace.models import Market


class MarketTierSerializer(serializers.Serializer):
    slug = serializers.CharField()
    name = serializers.CharField()
    description = serializers.CharField()
    min_context_tokens = serializers.IntegerField()
    min_output_tokens_per_s = serializers.IntegerField()
    max_ttft_ms = serializers.IntegerField()
    max_output_tokens = serializers.IntegerField()
    admitted_models = serializers.ListField(child=serializers.CharField())


class MarketRegionSerializer(serializers.Serializer):
    code = serializers.CharField()
    name = serializers.CharField()
    residency_note = serializers.CharField()


class MarketOutputSerializer(serializers.Serializer):
    symbol = serializers.CharField()
    tier = MarketTierSerializer()
    region = MarketRegionSerializer()
    status = serializers.ChoiceField(choices=Market.Status.choices)
    lot_tokens = serializers.IntegerField(help_text="Billable tokens per lot.")
    tick = MoneyField(source="tick_micro", help_text="Price step, USD per 1M billable tokens.")
    min_lots = serializers.IntegerField()
    max_lots = serializers.IntegerField()
    reference_price = MoneyField(source="reference_price_micro", help_text=PRICE_HELP)
    band_bp = serializers.IntegerField(help_text="Allowed distance from the reference, each way.")
    band_low = MoneyField(source="band_low_micro", help_text="Lowest price an order may carry.")
    band_high = MoneyField(source="band_high_micro", help_text="Highest; market bids hold at it.")
    output_weight_bp = serializers.IntegerField(help_text="Billable tokens per output token, bp.")
    cache_weight_bp = serializers.IntegerField(help_text="Billable tokens per cached input, bp.")
    maker_fee_bp = serializers.IntegerField()
    taker_fee_bp = serializers.IntegerField()
    delivery_days = serializers.IntegerField()
    expiry_policy = serializers.ChoiceField(choices=Market.ExpiryPolicy.choices)


MARKET_EXAMPLE = {
    "symbol": "FRONTIER-EU",
    "tier": {
        "slug": "frontier",
        "name": "Frontier",
        "description": "The strongest models of the day.",
        "min_context_tokens": 200000,
        "min_output_tokens_per_s": 40,
        "max_ttft_ms": 2000,
        "max_output_tokens": 32000,
        "admitted_models": ["gpt-5.5", "claude-opus-4.5"],
    },
    "region": {"code": "eu", "name": "Europe", "residency_note": "Processed in the EU."},
    "status": "open",
    "lot_tokens": 1000000,
    "tick": "0.010000",
    "min_lots": 1,
    "max_lots": 10000,
    "reference_price": "5.000000",
    "band_bp": 2000,
    "band_low": "4.000000",
    "band_high": "6.000000",
    "output_weight_bp": 60000,
    "cache_weight_bp": 1000,
    "maker_fee_bp": 10,
    "taker_fee_bp": 25,
    "delivery_days": 30,
    "expiry_policy": "refund",
}


class MarketListApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="markets_list",
        responses=MarketOutputSerializer(many=True),
        tags=["markets"],
        auth=[],
        examples=[OpenApiExample("Markets", value=[MARKET_EXAMPLE], response_only=True)],
    )
    def get(self, request):
        markets = selectors.market_list()
        return Response(MarketOutputSerializer(markets, many=True).data)


class MarketDetailApi(APIView):
    permission_classes = [AllowAny]

    @extend_schema(
        operation_id="markets_get",
        responses=MarketOutputSerializer,
        tags=["markets"],
        auth=[],
        examples=[OpenApiExample("A market", value=MARKET_EXAMPLE, response_only=True)],
    )
    def get(self, request, symbol: str):
        market = selectors.market_get_by_symbol(symbol=symbol)
        return Response(MarketOutputSerializer(market).data)
