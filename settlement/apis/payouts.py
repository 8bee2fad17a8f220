"""REST API for money leaving the exchange: provider payouts and buyer withdrawals."""

from drf_spectacular.utils import OpenApiExample, extend_schema
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
from settlement import selectors
from settlement.models.payouts import PayoutAccount
from settlement.services import payouts as payout_services


class PayoutOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField(
        help_text="pending, sent, paid (the transfer is confirmed), failed or reversed; "
        "failed and reversed amounts are back in earned."
    )
    origin = serializers.CharField(help_text="requested, scheduled or retry.")
    amount = MoneyField(source="amount_micro")
    currency = serializers.CharField()
    reversed = MoneyField(source="reversed_micro", help_text="Taken back by Stripe, if any.")
    stripe_transfer_id = serializers.CharField(allow_null=True)
    failure_reason = serializers.CharField()
    created_at = serializers.DateTimeField()
    sent_at = serializers.DateTimeField(allow_null=True)
    paid_at = serializers.DateTimeField(allow_null=True)
    failed_at = serializers.DateTimeField(allow_null=True)


class PayoutCollectionApi(APIView):
    """GET lists the org's payouts (scope read); POST requests one (scope payouts)."""

    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    def get_permissions(self):
        self.required_scope = Scope.PAYOUTS if self.request.method == "POST" else Scope.READ
        return super().get_permissions()

    class InputSerializer(serializers.Serializer):
        amount = MoneyField(
            places=2,
            required=False,
            help_text="USD, whole cents. Leave it out to pay out everything earned.",
        )

    @extend_schema(
        operation_id="payouts_list", responses=PayoutOutputSerializer(many=True), tags=["money"]
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.payout_list(org_id=request.auth.org.id), request, view=self
        )
        return paginator.get_paginated_response(PayoutOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="payouts_create",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: PayoutOutputSerializer},
        tags=["money"],
        description=(
            "Moves earnings to payout_pending and sends them to the org's connected Stripe "
            "account. The payout is paid once Stripe's signed transfer event confirms it; a "
            "refusal returns the money to earned. 402 when earned is short, 409 when the "
            "Stripe account is missing or its onboarding is not finished."
        ),
        examples=[
            OpenApiExample("Pay out $120", value={"amount": "120.00"}, request_only=True),
            OpenApiExample("Pay out everything earned", value={}, request_only=True),
        ],
    )
    def post(self, request):
        key = idempotency_key_from(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        payout = payout_services.payout_request(
            principal=request.auth,
            amount_micro=data.validated_data.get("amount"),
            idempotency_key=key,
        )
        return created(PayoutOutputSerializer(payout).data)


class PayoutAccountConnectApi(APIView):
    """Set the org's payout terms and get a Stripe Express onboarding link (scope payouts)."""

    required_scope = Scope.PAYOUTS

    class InputSerializer(serializers.Serializer):
        payout_minimum = MoneyField(
            places=2, required=False, help_text="Scheduled payouts wait until earned reaches it."
        )
        schedule = serializers.ChoiceField(
            choices=PayoutAccount.Schedule.choices,
            required=False,
            help_text="When payouts go out by themselves; manual means only on request.",
        )

    class OutputSerializer(serializers.Serializer):
        stripe_account_id = serializers.CharField()
        onboarding_status = serializers.CharField(
            help_text="pending until Stripe enables the account for transfers, then enabled."
        )
        payout_minimum = MoneyField(source="payout_minimum_micro")
        schedule = serializers.CharField()
        onboarding_url = serializers.CharField(
            help_text="Stripe's hosted onboarding; single use, expires within minutes."
        )

    @extend_schema(
        operation_id="payout_account_connect",
        request=InputSerializer,
        responses={200: OutputSerializer},
        tags=["money"],
        examples=[
            OpenApiExample(
                "Weekly payouts of at least $50",
                value={"payout_minimum": "50.00", "schedule": "weekly"},
                request_only=True,
            ),
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        account, url = payout_services.payout_account_connect(
            principal=request.auth,
            payout_minimum_micro=data.validated_data.get("payout_minimum"),
            schedule=data.validated_data.get("schedule"),
        )
        account.onboarding_url = url
        return Response(self.OutputSerializer(account).data)


class WithdrawalRefundOutputSerializer(serializers.Serializer):
    topup_id = serializers.IntegerField()
    amount = MoneyField(source="amount_micro")
    status = serializers.CharField(help_text="pending, sent, succeeded or failed.")
    failure_reason = serializers.CharField()


class WithdrawalOutputSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField(help_text="pending, succeeded, partial or failed.")
    amount = MoneyField(source="amount_micro")
    currency = serializers.CharField()
    refunded = MoneyField(source="refunded_micro", help_text="Refunded to cards so far.")
    returned = MoneyField(
        source="returned_micro", help_text="Refunds that failed, back in available."
    )
    refunds = WithdrawalRefundOutputSerializer(many=True, source="refunds.all")
    created_at = serializers.DateTimeField()
    completed_at = serializers.DateTimeField(allow_null=True)


class WithdrawalCollectionApi(APIView):
    """GET lists the org's withdrawals (scope read); POST requests one (scope payouts)."""

    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    def get_permissions(self):
        self.required_scope = Scope.PAYOUTS if self.request.method == "POST" else Scope.READ
        return super().get_permissions()

    class InputSerializer(serializers.Serializer):
        amount = MoneyField(places=2, help_text="USD, whole cents, from the available balance.")

    @extend_schema(
        operation_id="withdrawals_list",
        responses=WithdrawalOutputSerializer(many=True),
        tags=["money"],
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(
            selectors.withdrawal_list(org_id=request.auth.org.id), request, view=self
        )
        return paginator.get_paginated_response(WithdrawalOutputSerializer(page, many=True).data)

    @extend_schema(
        operation_id="withdrawals_create",
        request=InputSerializer,
        parameters=[IDEMPOTENCY_KEY_PARAMETER],
        responses={201: WithdrawalOutputSerializer},
        tags=["money"],
        description=(
            "Refunds unused available balance to the cards that paid it, newest top-up first. "
            "The amount is held at once and leaves when Stripe confirms each refund; a failed "
            "refund returns to available. 402 when available is short, 409 when the card "
            "payments can't take that much back."
        ),
        examples=[OpenApiExample("Withdraw $25", value={"amount": "25.00"}, request_only=True)],
    )
    def post(self, request):
        key = idempotency_key_from(request)
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        withdrawal = payout_services.withdrawal_request(
            principal=request.auth,
            amount_micro=data.validated_data["amount"],
            idempotency_key=key,
        )
        return created(WithdrawalOutputSerializer(withdrawal).data)
