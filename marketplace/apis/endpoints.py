"""Provider endpoint registration and listing."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Scope
from core.api import created
from marketplace import selectors, services
from marketplace.models import ProviderEndpoint


class EndpointOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    market = serializers.CharField(source="market.symbol")
    base_url = serializers.CharField()
    models = serializers.ListField(child=serializers.CharField())
    capacity_tokens_per_day = serializers.IntegerField()
    status = serializers.ChoiceField(choices=ProviderEndpoint.Status.choices)
    verified_at = serializers.DateTimeField(allow_null=True)
    created_at = serializers.DateTimeField()


class EndpointCollectionApi(APIView):
    """GET lists the provider org's endpoints (scope read); POST registers one (scope trade)."""

    def get_permissions(self):
        self.required_scope = Scope.TRADE if self.request.method == "POST" else Scope.READ
        return super().get_permissions()

    class InputSerializer(serializers.Serializer):
        market = serializers.CharField(max_length=32, help_text="Market symbol.")
        base_url = serializers.CharField(max_length=500, help_text="OpenAI-compatible base URL.")
        models = serializers.ListField(
            child=serializers.CharField(max_length=120), allow_empty=False, max_length=50
        )
        capacity_tokens_per_day = serializers.IntegerField(
            min_value=1, max_value=9_223_372_036_854_775_807
        )

    @extend_schema(
        operation_id="endpoints_list",
        responses=EndpointOutputSerializer(many=True),
        tags=["providers"],
    )
    def get(self, request):
        endpoints = selectors.endpoint_list(org_id=request.auth.org.id)
        return Response(EndpointOutputSerializer(endpoints, many=True).data)

    @extend_schema(
        operation_id="endpoints_register",
        request=InputSerializer,
        responses={201: EndpointOutputSerializer},
        tags=["providers"],
        description="Registers an endpoint; it backs asks once staff have verified it.",
        examples=[
            OpenApiExample(
                "An endpoint",
                value={
                    "market": "FRONTIER-EU",
                    "base_url": "https://inference.example.com/v1",
                    "models": ["gpt-5.5"],
                    "capacity_tokens_per_day": 2000000000,
                },
                request_only=True,
            )
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        fields = data.validated_data
        market = selectors.market_get_by_symbol(symbol=fields["market"])
        endpoint = services.endpoint_register(
            principal=request.auth,
            market_id=market.id,
            base_url=fields["base_url"],
            models=fields["models"],
            capacity_tokens_per_day=fields["capacity_tokens_per_day"],
        )
        return created(EndpointOutputSerializer(endpoint).data)
