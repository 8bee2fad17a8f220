"""REST API for an org's money: balances, its ledger, card top-ups."""

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.exceptions import ValidationError
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
from settlement import selectors
from settlement.filters import LedgerEntryFilter
from settlement.models import LedgerAccount, LedgerTransaction
from settlement.services import topup_create


class BalancesApi(APIView):
    required_scope = Scope.READ

    class OutputSerializer(serializers.Serializer):
        currency = serializers.CharField()
        available = MoneyField(source="available_micro")
        held = MoneyField(source="held_micro", help_text="Collateral of open bids.")
        escrow = MoneyField(source="escrow_micro", help_text="Paid for tokens not yet delivered.")
        earned = MoneyField(source="earned_micro", help_text="Provider proceeds not yet paid out.")
        payout_pending = MoneyField(source="payout_pending_micro")
        total = MoneyField(source="total_micro")

    @extend_schema(operation_id="balances", responses=OutputSerializer(many=True), tags=["money"])
    def get(self, request):
        balances = selectors.balances_for_org(org_id=request.auth.org.id)
        return Response(self.OutputSerializer(balances, many=True).data)


class LedgerListApi(APIView):
    required_scope = Scope.READ
    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        created_at = serializers.DateTimeField()
        transaction_id = serializers.IntegerField()
        kind = serializers.CharField(source="transaction.kind")
        reference = serializers.CharField(source="transaction.reference")
        account = serializers.CharField(source="account.kind")
        currency = serializers.CharField(source="account.currency")
        amount = MoneyField(
            source="amount_micro", help_text="Signed: positive adds to the account."
        )
        balance_after = MoneyField(source="balance_after_micro")
        reason = serializers.CharField(source="transaction.reason")

    @extend_schema(
        operation_id="ledger_list",
        parameters=[
            OpenApiParameter("account", str, enum=sorted(LedgerAccount.ORG_KINDS)),
            OpenApiParameter("kind", str, enum=LedgerTransaction.Kind.values),
            OpenApiParameter("reference", str),
            OpenApiParameter("created_after", OpenApiTypes.DATETIME),
            OpenApiParameter("created_before", OpenApiTypes.DATETIME),
            OpenApiParameter("cursor", str, description="From the previous page's next link."),
            OpenApiParameter("page_size", int, description="Up to 500; default 50."),
        ],
        responses=OutputSerializer(many=True),
        tags=["money"],
    )
    def get(self, request):
        entries = selectors.ledger_entry_list(org_id=request.auth.org.id)
        filterset = LedgerEntryFilter(request.query_params, queryset=entries)
        if not filterset.is_valid():
            raise ValidationError(filterset.errors)
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(filterset.qs, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class TopUpOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    amount = MoneyField(source="amount_micro")
    currency = serializers.CharField()
    method = serializers.CharField()
    stripe_payment_intent_id = serializers.CharField(allow_null=True)
    client_secret = serializers.CharField(
        help_text="For Stripe.js to confirm the PaymentIntent in payment_intent mode."
    )
    checkout_url = serializers.CharField(help_text="Where to send the payer in checkout mode.")
    failure_message = serializers.CharField()
    refunded = MoneyField(source="refunded_micro")
    created_at = serializers.DateTimeField()
    succeeded_at = serializers.DateTimeField(allow_null=True)


class TopUpCollectionApi(APIView):
    """GET lists the org's top-ups (scope read); POST starts one (scope trade)."""

    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    def get_permissions(self):
        self.required_scope = Scope.TRADE if self.request.method == "POST" else Scope.READ
        return super().get_permissions()

    class InputSerializer(serializers.Serializer):
        amount = MoneyField(places=2, help_text="USD, whole cents, within the configured limits.")
        payment_method = serializers.CharField(
            required=False,
            max_length=100,
            help_text="Test mode only: confirm at once with this payment method (pm_card_visa).",
        )

    @extend_schema(
        operation_id="topups_list", responses=TopUpOutputSerializer(many=True), tags=["money"]
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.topup_list(org_id=request.auth.org.id), request, view=self
        )
        return paginator.get_paginated_response(TopUpOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="topups_create",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: TopUpOutputSerializer},
        tags=["money"],
        description=(
            "Starts a card payment. The balance is credited only when Stripe's signed webhook "
            "confirms it; poll GET /api/v1/topups/{id} until status is succeeded."
        ),
        examples=[
            OpenApiExample("Top up $50", value={"amount": "50.00"}, request_only=True),
            OpenApiExample(
                "Top up $50 with a test card (test mode)",
                value={"amount": "50.00", "payment_method": "pm_card_visa"},
                request_only=True,
            ),
        ],
    )
    def post(self, request):
        key = idempotency_key_from(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        topup = topup_create(
            principal=request.auth,
            amount_micro=data.validated_data["amount"],
            payment_method=data.validated_data.get("payment_method"),
            idempotency_key=key,
        )
        return created(TopUpOutputSerializer(topup).data)


class TopUpDetailApi(APIView):
    required_scope = Scope.READ

    @extend_schema(operation_id="topups_get", responses=TopUpOutputSerializer, tags=["money"])
    def get(self, request, topup_id: int):
        topup = selectors.topup_get(org_id=request.auth.org.id, topup_id=topup_id)
        return Response(TopUpOutputSerializer(topup).data)
