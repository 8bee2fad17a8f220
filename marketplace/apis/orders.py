"""Order endpoints: place, list, get, cancel, cancel all, reduce and preview."""

import copy

from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Scope
from core.api import (
    IDEMPOTENCY_KEY_PARAMETER,
    CreatedAtCursorPagination,
    MoneyField,
    created,
    idempotency_key_from,
)
from marketplace import selectors, services
from marketplace.apis.wire import MAX_LOTS_ON_THE_WIRE, PRICE_HELP
from marketplace.models import Order


class OrderOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    market = serializers.CharField(source="market.symbol")
    side = serializers.ChoiceField(choices=Order.Side.choices)
    type = serializers.ChoiceField(choices=Order.Type.choices)
    tif = serializers.ChoiceField(choices=Order.TimeInForce.choices)
    post_only = serializers.BooleanField()
    stp = serializers.ChoiceField(choices=Order.SelfTradePrevention.choices)
    price = MoneyField(source="price_micro", allow_null=True, help_text=PRICE_HELP)
    lots = serializers.IntegerField(help_text="Ordered lots, less any reduced.")
    filled_lots = serializers.IntegerField()
    remaining_lots = serializers.IntegerField()
    reduced_lots = serializers.IntegerField()
    status = serializers.ChoiceField(choices=Order.Status.choices)
    reject_reason = serializers.CharField()
    hold = MoneyField(source="hold_micro", help_text="Set aside when a bid was placed; 0 for asks.")
    client_order_id = serializers.CharField(allow_null=True)
    sequence = serializers.IntegerField(allow_null=True, help_text="Set when the engine takes it.")
    created_at = serializers.DateTimeField()
    updated_at = serializers.DateTimeField()


# Placing an order is the busiest request there is: one output serializer, its fields built and
# bound once per process, writes every placed order. Its representation keeps no state between
# calls, so threads share it.
_ORDER_OUTPUT = OrderOutputSerializer()


def order_data(order: Order) -> dict:
    """The order as OrderOutputSerializer(order).data has it."""
    return _ORDER_OUTPUT.to_representation(order)


ORDER_EXAMPLE = {
    "id": 42,
    "market": "FRONTIER-EU",
    "side": "buy",
    "type": "limit",
    "tif": "GTC",
    "post_only": False,
    "stp": "expire_taker",
    "price": "5.000000",
    "lots": 10,
    "filled_lots": 0,
    "remaining_lots": 10,
    "reduced_lots": 0,
    "status": "pending",
    "reject_reason": "",
    "hold": "50.125000",
    "client_order_id": "bot-7-0001",
    "sequence": None,
    "created_at": "2026-01-01T12:00:00Z",
    "updated_at": "2026-01-01T12:00:00Z",
}


class OrderInputSerializer(serializers.Serializer):
    def get_fields(self) -> dict:
        # DRF deep-copies every declared field for every request, re-running each field's
        # __init__; a shallow copy is enough, as binding (the only per-instance change) sets
        # attributes on the copy and the validators they share keep no state.
        return {name: copy.copy(field) for name, field in self._declared_fields.items()}

    market = serializers.CharField(max_length=32, help_text='Market symbol, e.g. "FRONTIER-EU".')
    side = serializers.ChoiceField(choices=Order.Side.choices)
    type = serializers.ChoiceField(choices=Order.Type.choices, default=Order.Type.LIMIT)
    tif = serializers.ChoiceField(
        choices=Order.TimeInForce.choices,
        required=False,
        help_text="Defaults to GTC for limit orders and IOC for market orders.",
    )
    price = MoneyField(
        required=False, allow_null=True, default=None, help_text=PRICE_HELP + " None for market."
    )
    lots = serializers.IntegerField(min_value=-MAX_LOTS_ON_THE_WIRE, max_value=MAX_LOTS_ON_THE_WIRE)
    post_only = serializers.BooleanField(default=False)
    stp = serializers.ChoiceField(
        choices=Order.SelfTradePrevention.choices,
        default=Order.SelfTradePrevention.EXPIRE_TAKER,
        help_text="Self-trade prevention against your own org's resting orders.",
    )

    def order_fields(self) -> dict:
        """The validated order as the services take it, less the market."""
        data = self.validated_data
        return {
            "side": data["side"],
            "type": data["type"],
            "tif": data.get("tif"),
            "price_micro": data["price"],
            "lots": data["lots"],
            "post_only": data["post_only"],
            "stp": data["stp"],
        }


class OrderCollectionApi(APIView):
    """GET lists the org's orders (scope read); POST places one (scope trade)."""

    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    def get_permissions(self):
        self.required_scope = Scope.TRADE if self.request.method == "POST" else Scope.READ
        return super().get_permissions()

    class InputSerializer(OrderInputSerializer):
        client_order_id = serializers.CharField(
            max_length=64,
            required=False,
            allow_null=True,
            default=None,
            help_text="Your own id for the order; unique within your org.",
        )

    class FilterSerializer(serializers.Serializer):
        market = serializers.CharField(required=False, max_length=32)
        status = serializers.ChoiceField(choices=Order.Status.choices, required=False)
        side = serializers.ChoiceField(choices=Order.Side.choices, required=False)
        client_order_id = serializers.CharField(required=False, max_length=64)

    @extend_schema(
        operation_id="orders_list",
        parameters=[
            OpenApiParameter("market", str, description="Market symbol."),
            OpenApiParameter("status", str, enum=Order.Status.values),
            OpenApiParameter("side", str, enum=Order.Side.values),
            OpenApiParameter("client_order_id", str),
            OpenApiParameter("cursor", str, description="From the previous page's next link."),
            OpenApiParameter("page_size", int, description="Up to 500; default 50."),
        ],
        responses=OrderOutputSerializer(many=True),
        tags=["orders"],
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        wanted = filters.validated_data
        orders = selectors.order_list(
            org_id=request.auth.org.id,
            market_symbol=wanted.get("market"),
            status=wanted.get("status"),
            side=wanted.get("side"),
            client_order_id=wanted.get("client_order_id"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(orders, request, view=self)
        return paginator.get_paginated_response(OrderOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="orders_place",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: OrderOutputSerializer},
        tags=["orders"],
        description=(
            "Validates the order against the market's rules, sets a bid's collateral aside "
            "(lots x price + the higher fee; a market bid at the top of the price band) and "
            "queues it for matching. It comes back `pending`; poll GET /api/v1/orders/{id}."
        ),
        examples=[
            OpenApiExample(
                "Bid 10 lots at $5.00 per 1M",
                value={
                    "market": "FRONTIER-EU",
                    "side": "buy",
                    "type": "limit",
                    "price": "5.000000",
                    "lots": 10,
                    "client_order_id": "bot-7-0001",
                },
                request_only=True,
            ),
            OpenApiExample(
                "Market buy, fill or kill",
                value={
                    "market": "FRONTIER-EU",
                    "side": "buy",
                    "type": "market",
                    "tif": "FOK",
                    "lots": 3,
                },
                request_only=True,
            ),
            OpenApiExample(
                "Post-only ask",
                value={
                    "market": "FRONTIER-EU",
                    "side": "sell",
                    "price": "5.200000",
                    "lots": 20,
                    "post_only": True,
                },
                request_only=True,
            ),
            OpenApiExample("Placed", value=ORDER_EXAMPLE, response_only=True, status_codes=["201"]),
        ],
    )
    def post(self, request):
        key = idempotency_key_from(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        market = selectors.market_get_by_symbol(symbol=data.validated_data["market"])
        order = services.order_place(
            principal=request.auth,
            market_id=market.id,
            market=market,
            client_order_id=data.validated_data["client_order_id"],
            idempotency_key=key,
            **data.order_fields(),
        )
        return created(order_data(order))


class OrderDetailApi(APIView):
    required_scope = Scope.READ

    @extend_schema(
        operation_id="orders_get",
        responses=OrderOutputSerializer,
        tags=["orders"],
        examples=[OpenApiExample("An order", value=ORDER_EXAMPLE, response_only=True)],
    )
    def get(self, request, order_id: int):
        order = selectors.order_get(org_id=request.auth.org.id, order_id=order_id)
        return Response(OrderOutputSerializer(order).data)


class OrderCancelApi(APIView):
    required_scope = Scope.TRADE

    @extend_schema(
        operation_id="orders_cancel",
        request=None,
        responses=OrderOutputSerializer,
        tags=["orders"],
        description="Cancels a pending or open order and releases what its hold has left.",
    )
    def post(self, request, order_id: int):
        order = services.order_cancel(principal=request.auth, order_id=order_id)
        return Response(OrderOutputSerializer(order).data)


class OrderCancelAllApi(APIView):
    required_scope = Scope.TRADE

    class InputSerializer(serializers.Serializer):
        market = serializers.CharField(max_length=32, help_text="Market symbol.")

    class OutputSerializer(serializers.Serializer):
        cancelled = serializers.IntegerField(help_text="How many orders were cancelled.")
        orders = OrderOutputSerializer(many=True)

    @extend_schema(
        operation_id="orders_cancel_all",
        request=InputSerializer,
        responses=OutputSerializer,
        tags=["orders"],
        examples=[
            OpenApiExample(
                "Cancel all in a market", value={"market": "FRONTIER-EU"}, request_only=True
            )
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        market = selectors.market_get_by_symbol(symbol=data.validated_data["market"])
        orders = services.order_cancel_all(principal=request.auth, market_id=market.id)
        return Response(self.OutputSerializer({"cancelled": len(orders), "orders": orders}).data)


class OrderReduceApi(APIView):
    required_scope = Scope.TRADE

    class InputSerializer(serializers.Serializer):
        by_lots = serializers.IntegerField(
            min_value=-MAX_LOTS_ON_THE_WIRE,
            max_value=MAX_LOTS_ON_THE_WIRE,
            help_text="Lots to take off; fewer than remain. The order keeps its queue place.",
        )

    @extend_schema(
        operation_id="orders_reduce",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses=OrderOutputSerializer,
        tags=["orders"],
        examples=[OpenApiExample("Take 2 lots off", value={"by_lots": 2}, request_only=True)],
    )
    def post(self, request, order_id: int):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        order = services.order_reduce(
            principal=request.auth,
            order_id=order_id,
            by_lots=data.validated_data["by_lots"],
            idempotency_key=idempotency_key_from(request),
        )
        return Response(OrderOutputSerializer(order).data)


class OrderPreviewApi(APIView):
    required_scope = Scope.READ

    class InputSerializer(OrderInputSerializer):
        pass

    class OutputSerializer(serializers.Serializer):
        market = serializers.CharField(source="market.symbol")
        side = serializers.CharField()
        type = serializers.CharField()
        tif = serializers.CharField()
        price = MoneyField(source="price_micro", allow_null=True)
        lots = serializers.IntegerField()
        hold = MoneyField(source="hold_micro", help_text="What placing it would set aside.")
        fee_bp = serializers.IntegerField(help_text="The taker fee rate.")
        fee = MoneyField(source="fee_micro", help_text="Taker fee on the expected fill.")
        fill_lots = serializers.IntegerField(help_text="Lots the book would fill now.")
        fill_notional = MoneyField(source="fill_notional_micro")
        fill_average_price = MoneyField(
            source="fill_average_price_micro", allow_null=True, help_text="Rounded down."
        )
        resting_lots = serializers.IntegerField(help_text="Lots that would rest on the book.")
        reject_reason = serializers.CharField(
            allow_null=True, help_text="Why the engine would reject it (post_only_would_take)."
        )

    @extend_schema(
        operation_id="orders_preview",
        request=InputSerializer,
        responses=OutputSerializer,
        tags=["orders"],
        description="What placing this order now would hold and fill. Changes nothing.",
        examples=[
            OpenApiExample(
                "Preview a bid",
                value={"market": "FRONTIER-EU", "side": "buy", "price": "5.000000", "lots": 10},
                request_only=True,
            )
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        market = selectors.market_get_by_symbol(symbol=data.validated_data["market"])
        preview = services.order_preview(
            principal=request.auth, market_id=market.id, **data.order_fields()
        )
        return Response(self.OutputSerializer(preview).data)
