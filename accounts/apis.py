"""REST endpoints for who am I and API keys."""

from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts import selectors, services
from accounts.models import Scope
from core.api import created


class MeApi(APIView):
    required_scope = Scope.READ

    class OutputSerializer(serializers.Serializer):
        class OrgSerializer(serializers.Serializer):
            id = serializers.IntegerField()
            name = serializers.CharField()
            slug = serializers.CharField()
            is_buyer = serializers.BooleanField()
            is_provider = serializers.BooleanField()

        email = serializers.EmailField(source="user.email")
        org = OrgSerializer()
        role = serializers.CharField(source="membership.role")
        scopes = serializers.SerializerMethodField()
        via = serializers.CharField()
        api_key_prefix = serializers.CharField(source="api_key.prefix", default=None)

        def get_scopes(self, principal) -> list[str]:
            return sorted(principal.scopes)

    @extend_schema(operation_id="me", responses=OutputSerializer, tags=["account"])
    def get(self, request):
        return Response(self.OutputSerializer(request.auth).data)


class ApiKeyOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()
    prefix = serializers.CharField()
    scopes = serializers.ListField(child=serializers.CharField())
    status = serializers.CharField()
    created_at = serializers.DateTimeField()
    expires_at = serializers.DateTimeField(allow_null=True)
    last_used_at = serializers.DateTimeField(allow_null=True)
    revoked_at = serializers.DateTimeField(allow_null=True)
    created_by = serializers.EmailField(source="created_by.email")


class ApiKeyCollectionApi(APIView):
    """GET lists the org's keys (scope read); POST creates one (admins and owners)."""

    def get_permissions(self):
        self.required_scope = "manage_keys" if self.request.method == "POST" else Scope.READ
        return super().get_permissions()

    class InputSerializer(serializers.Serializer):
        name = serializers.CharField(max_length=80)
        scopes = serializers.ListField(
            child=serializers.ChoiceField(choices=Scope.choices), allow_empty=False
        )
        expires_at = serializers.DateTimeField(required=False, allow_null=True)

    class CreatedSerializer(ApiKeyOutputSerializer):
        key = serializers.CharField(help_text="The secret. Shown once; store it now.")

    @extend_schema(
        operation_id="api_keys_list", responses=ApiKeyOutputSerializer(many=True), tags=["account"]
    )
    def get(self, request):
        keys = selectors.api_key_list(org=request.auth.org).select_related("created_by")
        return Response(ApiKeyOutputSerializer(keys, many=True).data)

    @extend_schema(
        operation_id="api_keys_create",
        request=InputSerializer,
        responses={201: CreatedSerializer},
        tags=["account"],
        examples=[
            OpenApiExample(
                "A trading bot's key",
                value={"name": "trading bot", "scopes": ["read", "trade"]},
                request_only=True,
            )
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        api_key, full_key = services.api_key_create(principal=request.auth, **data.validated_data)
        api_key.key = full_key
        return created(self.CreatedSerializer(api_key).data)


class ApiKeyDetailApi(APIView):
    def get_permissions(self):
        self.required_scope = "manage_keys" if self.request.method == "DELETE" else Scope.READ
        return super().get_permissions()

    @extend_schema(operation_id="api_keys_get", responses=ApiKeyOutputSerializer, tags=["account"])
    def get(self, request, api_key_id: int):
        api_key = selectors.api_key_get(org=request.auth.org, api_key_id=api_key_id)
        return Response(ApiKeyOutputSerializer(api_key).data)

    @extend_schema(
        operation_id="api_keys_revoke",
        responses=ApiKeyOutputSerializer,
        tags=["account"],
        description="Revokes the key at once; the row stays for the audit trail. Idempotent.",
    )
    def delete(self, request, api_key_id: int):
        api_key = services.api_key_revoke(principal=request.auth, api_key_id=api_key_id)
        return Response(ApiKeyOutputSerializer(api_key).data)
