"""REST endpoints for balances, the ledger, card top-ups and entitlements."""

import csv
import io

from django.http import HttpResponse
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
from core.units import money_format
from settlement import selectors
from settlement.filters import LedgerEntryFilter
from settlement.models import Entitlement, LedgerAccount, LedgerTransaction
from settlement.models.payouts import PayoutAccount
from settlement.models.settlement import Discrepancy
from settlement.services import payouts as payout_services
from settlement.services import topup_create
from settlement.services.usage import MAX_BATCH_RECORDS, REJECTION_CODES, UsageInput, usage_ingest


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


class EntitlementListApi(APIView):
    """The tokens the caller org bought (role buyer) or sold (role provider), with their use."""

    required_scope = Scope.READ
    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    class FilterSerializer(serializers.Serializer):
        role = serializers.ChoiceField(
            choices=selectors.ENTITLEMENT_ROLES, required=False, default="buyer"
        )
        market = serializers.CharField(required=False, max_length=32)
        status = serializers.ChoiceField(choices=Entitlement.Status.choices, required=False)

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        trade_id = serializers.IntegerField()
        market = serializers.CharField(source="market.symbol")
        buyer_org_id = serializers.IntegerField()
        provider_org_id = serializers.IntegerField()
        status = serializers.ChoiceField(choices=Entitlement.Status.choices)
        tokens_bought = serializers.IntegerField(help_text="Billable tokens.")
        tokens_used = serializers.IntegerField()
        tokens_left = serializers.IntegerField()
        price = MoneyField(source="price_micro", help_text="USD per 1M billable tokens.")
        value = MoneyField(source="value_micro", help_text="Paid into escrow at the trade.")
        charged = MoneyField(source="charged_micro", help_text="Moved on to the provider so far.")
        escrow_left = MoneyField(source="escrow_left_micro")
        output_weight_bp = serializers.IntegerField()
        cache_weight_bp = serializers.IntegerField()
        provider_fee_bp = serializers.IntegerField()
        expiry_policy = serializers.ChoiceField(choices=Entitlement.ExpiryPolicy.choices)
        expires_at = serializers.DateTimeField()
        created_at = serializers.DateTimeField()
        closed_at = serializers.DateTimeField(allow_null=True)

    @extend_schema(
        operation_id="entitlements_list",
        parameters=[
            OpenApiParameter(
                "role",
                str,
                enum=list(selectors.ENTITLEMENT_ROLES),
                description="buyer (default): what you bought; provider: what you sold.",
            ),
            OpenApiParameter("market", str, description="Market symbol."),
            OpenApiParameter("status", str, enum=Entitlement.Status.values),
            OpenApiParameter("cursor", str, description="From the previous page's next link."),
            OpenApiParameter("page_size", int, description="Up to 500; default 50."),
        ],
        responses=OutputSerializer(many=True),
        tags=["money"],
        examples=[
            OpenApiExample(
                "An entitlement bought",
                value={
                    "id": 7,
                    "trade_id": 981,
                    "market": "FRONTIER-EU",
                    "buyer_org_id": 12,
                    "provider_org_id": 3,
                    "status": "open",
                    "tokens_bought": 4000000,
                    "tokens_used": 1500000,
                    "tokens_left": 2500000,
                    "price": "5.010000",
                    "value": "20.040000",
                    "charged": "7.515000",
                    "escrow_left": "12.525000",
                    "output_weight_bp": 60000,
                    "cache_weight_bp": 1000,
                    "provider_fee_bp": 10,
                    "expiry_policy": "refund",
                    "expires_at": "2026-01-31T12:00:00Z",
                    "created_at": "2026-01-01T12:00:00Z",
                    "closed_at": None,
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        wanted = filters.validated_data
        entitlements = selectors.entitlement_list(
            org_id=request.auth.org.id,
            role=wanted["role"],
            market_symbol=wanted.get("market"),
            status=wanted.get("status"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(entitlements, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class UsageIngestApi(APIView):
    """Report a batch of usage; each record is answered accepted, duplicate or rejected."""

    required_scope = Scope.USAGE_WRITE

    class InputSerializer(serializers.Serializer):
        class RecordSerializer(serializers.Serializer):
            request_id = serializers.RegexField(
                r"^[!-~]{1,128}$",
                help_text="Your id of the request, 1-128 visible ASCII characters. Unique per "
                "reporting org and side: a record sent again is answered with the first result.",
            )
            market = serializers.CharField(max_length=32, help_text="Market symbol.")
            counterparty = serializers.CharField(
                max_length=140,
                help_text="The other org's slug: the buyer you served, or the provider that "
                "served you.",
            )
            model = serializers.CharField(max_length=120)
            input_tokens = serializers.IntegerField(help_text="Uncached input tokens.")
            cached_input_tokens = serializers.IntegerField(default=0)
            output_tokens = serializers.IntegerField(help_text="Reasoning tokens count as output.")
            started_at = serializers.DateTimeField()
            ended_at = serializers.DateTimeField()
            is_estimated = serializers.BooleanField(
                default=False, help_text="Counted from the text, not from the model's usage."
            )

        source = serializers.ChoiceField(
            choices=["provider", "buyer"],
            required=False,
            help_text="Which side reports; needed only when your org both buys and provides.",
        )
        records = serializers.ListField(
            child=RecordSerializer(), min_length=1, max_length=MAX_BATCH_RECORDS
        )

    class OutputSerializer(serializers.Serializer):
        class ResultSerializer(serializers.Serializer):
            class RecordSerializer(serializers.Serializer):
                id = serializers.IntegerField()
                source = serializers.CharField()
                is_primary = serializers.BooleanField(
                    help_text="False: kept to reconcile against the primary meter's figure."
                )
                billable_tokens = serializers.IntegerField()
                entitlement_tokens = serializers.IntegerField()
                payg_tokens = serializers.IntegerField()
                payg_price = MoneyField(source="payg_price_micro", help_text="Per 1M tokens.")
                payg_cost = MoneyField(source="payg_cost_micro")
                unfunded_tokens = serializers.IntegerField()
                unfunded = MoneyField(
                    source="unfunded_micro", help_text="Owed; the buyer's balance did not cover it."
                )
                received_at = serializers.DateTimeField()

            index = serializers.IntegerField(help_text="Position of the record in the request.")
            request_id = serializers.CharField()
            status = serializers.ChoiceField(choices=["accepted", "duplicate", "rejected"])
            code = serializers.CharField(help_text="Why it was rejected; empty otherwise.")
            message = serializers.CharField()
            record = RecordSerializer(allow_null=True)

        accepted = serializers.IntegerField()
        duplicates = serializers.IntegerField()
        rejected = serializers.IntegerField()
        results = ResultSerializer(many=True)

    @extend_schema(
        operation_id="usage_ingest",
        request=InputSerializer,
        responses=OutputSerializer,
        tags=["usage"],
        description=(
            f"Up to {MAX_BATCH_RECORDS:,} records. Providers report the buyers they served, "
            "buyers the providers that served them. A bad record never blocks the others; the "
            "accepted ones are stored (and the primary meter's drawn down and charged) "
            "together, or not at all. Rejection codes: "
            + "; ".join(f"`{code}`: {text}" for code, text in REJECTION_CODES.items())
        ),
        examples=[
            OpenApiExample(
                "A provider reports two requests",
                request_only=True,
                value={
                    "records": [
                        {
                            "request_id": "req-7f3a",
                            "market": "FRONTIER-EU",
                            "counterparty": "acme",
                            "model": "gpt-5.5",
                            "input_tokens": 1200,
                            "cached_input_tokens": 800,
                            "output_tokens": 350,
                            "started_at": "2026-11-25T10:00:00Z",
                            "ended_at": "2026-11-25T10:00:04Z",
                        },
                        {
                            "request_id": "req-7f3b",
                            "market": "FRONTIER-EU",
                            "counterparty": "acme",
                            "model": "gpt-5.5",
                            "input_tokens": -5,
                            "output_tokens": 10,
                            "started_at": "2026-11-25T10:00:05Z",
                            "ended_at": "2026-11-25T10:00:06Z",
                        },
                    ]
                },
            ),
            OpenApiExample(
                "One accepted, one rejected",
                response_only=True,
                value={
                    "accepted": 1,
                    "duplicates": 0,
                    "rejected": 1,
                    "results": [
                        {
                            "index": 0,
                            "request_id": "req-7f3a",
                            "status": "accepted",
                            "code": "",
                            "message": "",
                            "record": {
                                "id": 41,
                                "source": "provider",
                                "is_primary": True,
                                "billable_tokens": 22280,
                                "entitlement_tokens": 22280,
                                "payg_tokens": 0,
                                "payg_price": "0.000000",
                                "payg_cost": "0.000000",
                                "unfunded_tokens": 0,
                                "unfunded": "0.000000",
                                "received_at": "2026-11-25T10:01:00Z",
                            },
                        },
                        {
                            "index": 1,
                            "request_id": "req-7f3b",
                            "status": "rejected",
                            "code": "negative_tokens",
                            "message": REJECTION_CODES["negative_tokens"],
                            "record": None,
                        },
                    ],
                },
            ),
        ],
    )
    def post(self, request):
        data = self.InputSerializer(data=request.data)
        data.is_valid(raise_exception=True)
        results = usage_ingest(
            principal=request.auth,
            records=[UsageInput(**record) for record in data.validated_data["records"]],
            source=data.validated_data.get("source"),
        )
        counts = {status: 0 for status in ("accepted", "duplicate", "rejected")}
        for result in results:
            counts[result.status] += 1
        body = {
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "rejected": counts["rejected"],
            "results": results,
        }
        return Response(self.OutputSerializer(body).data)


class CreditGetApi(APIView):
    """How many billable tokens a buyer can still draw from the calling provider."""

    required_scope = Scope.READ

    class FilterSerializer(serializers.Serializer):
        buyer = serializers.CharField(max_length=140, help_text="The buyer org's slug.")
        market = serializers.CharField(max_length=32, help_text="Market symbol.")

    class OutputSerializer(serializers.Serializer):
        buyer = serializers.CharField(source="buyer.slug")
        market = serializers.CharField(source="market.symbol")
        billable_tokens = serializers.IntegerField(help_text="Entitlement plus pay-as-you-go.")
        entitlement_tokens = serializers.IntegerField(
            help_text="Left on the buyer's open entitlements from you in this market."
        )
        payg_tokens = serializers.IntegerField(
            help_text="What the buyer's available balance covers at the reference price."
        )
        reference_price = MoneyField(
            source="reference_price.price_micro", help_text="Pay-as-you-go price per 1M tokens."
        )
        reference_price_rule = serializers.ChoiceField(
            source="reference_price.rule",
            choices=["vwap_24h", "best_ask", "list"],
            help_text="Last 24 hours' VWAP, else the best ask, else the market's list price.",
        )
        unfunded_tokens = serializers.IntegerField(
            help_text="Pay-as-you-go tokens you served that the buyer's balance did not cover."
        )
        unfunded = MoneyField(source="unfunded_micro", help_text="What those tokens cost.")

    @extend_schema(
        operation_id="credit_get",
        parameters=[FilterSerializer],
        responses=OutputSerializer,
        tags=["usage"],
        description=(
            "For providers: stop serving a buyer before this reaches zero. Only buyers with "
            "entitlements from you in the market are found."
        ),
        examples=[
            OpenApiExample(
                "A buyer with entitlements and some balance",
                response_only=True,
                value={
                    "buyer": "acme",
                    "market": "FRONTIER-EU",
                    "billable_tokens": 3_400_000,
                    "entitlement_tokens": 2_000_000,
                    "payg_tokens": 1_400_000,
                    "reference_price": "5.000000",
                    "reference_price_rule": "vwap_24h",
                    "unfunded_tokens": 0,
                    "unfunded": "0.000000",
                },
            )
        ],
    )
    def get(self, request):
        query = self.FilterSerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        credit = selectors.credit_get(
            provider_org=request.auth.org,
            buyer_slug=query.validated_data["buyer"],
            market_symbol=query.validated_data["market"],
        )
        return Response(self.OutputSerializer(credit).data)


# Payouts and withdrawals


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
            payout_services.payout_list(org_id=request.auth.org.id), request, view=self
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
            payout_services.withdrawal_list(org_id=request.auth.org.id), request, view=self
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


class DiscrepancyListApi(APIView):
    """The discrepancies of the caller org's pairs, as buyer or as provider, newest first."""

    required_scope = Scope.READ
    pagination_class = CreatedAtCursorPagination  # read by the schema: the list comes in pages

    class FilterSerializer(serializers.Serializer):
        status = serializers.ChoiceField(choices=Discrepancy.Status.choices, required=False)

    class OutputSerializer(serializers.Serializer):
        id = serializers.IntegerField()
        market = serializers.CharField(source="market.symbol")
        buyer_org_id = serializers.IntegerField()
        provider_org_id = serializers.IntegerField()
        hour = serializers.DateTimeField(help_text="Start of the hour (UTC) the usage ended in.")
        primary_tokens = serializers.IntegerField(help_text="Billable tokens by the primary meter.")
        other_tokens = serializers.IntegerField()
        source = serializers.ChoiceField(
            choices=Discrepancy.Source.choices, help_text="Whose report disagrees."
        )
        is_missing = serializers.BooleanField(help_text="That report never came.")
        status = serializers.ChoiceField(choices=Discrepancy.Status.choices)
        resolution = serializers.CharField(help_text="Empty while open.")
        resolved_tokens = serializers.IntegerField(allow_null=True)
        reason = serializers.CharField()
        resolved_at = serializers.DateTimeField(allow_null=True)
        is_settled = serializers.SerializerMethodField()

        def get_is_settled(self, obj) -> bool:
            return obj.settled_run_id is not None

    @extend_schema(
        operation_id="discrepancies_list",
        parameters=[
            OpenApiParameter("status", str, enum=Discrepancy.Status.values),
            OpenApiParameter("cursor", str, description="From the previous page's next link."),
            OpenApiParameter("page_size", int, description="Up to 500; default 50."),
        ],
        responses=OutputSerializer(many=True),
        tags=["settlement"],
        description=(
            "A discrepancy holds one hour of a buyer-provider pair out of settlement until staff "
            "resolve it; the hour is then paid on the resolved figure by the next run."
        ),
        examples=[
            OpenApiExample(
                "A held hour",
                value={
                    "next": None,
                    "previous": None,
                    "results": [
                        {
                            "id": 4,
                            "market": "FRONTIER-EU",
                            "buyer_org_id": 12,
                            "provider_org_id": 3,
                            "hour": "2026-01-05T14:00:00Z",
                            "primary_tokens": 1200000,
                            "other_tokens": 1310000,
                            "source": "provider",
                            "is_missing": False,
                            "status": "open",
                            "resolution": "",
                            "resolved_tokens": None,
                            "reason": "",
                            "resolved_at": None,
                            "is_settled": False,
                        }
                    ],
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        discrepancies = selectors.discrepancy_list(
            org_id=request.auth.org.id, status=filters.validated_data.get("status")
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(discrepancies, request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class StatementPeriodSerializer(serializers.Serializer):
    period_start = serializers.DateTimeField(help_text="Inclusive, e.g. 2026-01-01T00:00:00Z.")
    period_end = serializers.DateTimeField(help_text="Exclusive; at most 366 days after the start.")

    def validate(self, data):
        span = data["period_end"] - data["period_start"]
        if span.total_seconds() <= 0:
            raise ValidationError({"period_end": ["Must be after period_start."]})
        if span.days > 366:
            raise ValidationError({"period_end": ["A statement covers at most 366 days."]})
        return data


STATEMENT_PARAMETERS = [
    OpenApiParameter("period_start", OpenApiTypes.DATETIME, required=True),
    OpenApiParameter("period_end", OpenApiTypes.DATETIME, required=True),
]


def _statement_for(request):
    period = StatementPeriodSerializer(data=request.query_params)
    period.is_valid(raise_exception=True)
    rows = selectors.statement_rows(org_id=request.auth.org.id, **period.validated_data)
    return period.validated_data, rows


class StatementLineOutputSerializer(serializers.Serializer):
    account = serializers.CharField(source="account_kind")
    currency = serializers.CharField()
    opening = MoneyField(source="opening_micro")
    credits = MoneyField(source="credits_micro")
    debits = MoneyField(source="debits_micro")
    closing = MoneyField(source="closing_micro")
    movements = serializers.DictField(
        child=MoneyField(), help_text="Net change by ledger transaction kind (signed)."
    )


class StatementGetApi(APIView):
    """The caller org's statement: per account, opening + credits - debits = closing."""

    required_scope = Scope.READ

    class OutputSerializer(serializers.Serializer):
        period_start = serializers.DateTimeField()
        period_end = serializers.DateTimeField()
        lines = StatementLineOutputSerializer(many=True)
        opening = MoneyField(help_text="All accounts together.")
        credits = MoneyField()
        debits = MoneyField()
        closing = MoneyField()

    @extend_schema(
        operation_id="statements_get",
        parameters=STATEMENT_PARAMETERS,
        responses=OutputSerializer,
        tags=["settlement"],
        description="Entries count in the period they were created in. Also as CSV: "
        "GET /api/v1/statements.csv with the same parameters.",
        examples=[
            OpenApiExample(
                "One day",
                value={
                    "period_start": "2026-01-05T00:00:00Z",
                    "period_end": "2026-01-06T00:00:00Z",
                    "lines": [
                        {
                            "account": "escrow",
                            "currency": "USD",
                            "opening": "20.000000",
                            "credits": "0.000000",
                            "debits": "7.500000",
                            "closing": "12.500000",
                            "movements": {"delivery": "-7.500000"},
                        }
                    ],
                    "opening": "20.000000",
                    "credits": "0.000000",
                    "debits": "7.500000",
                    "closing": "12.500000",
                },
                response_only=True,
            )
        ],
    )
    def get(self, request):
        period, rows = _statement_for(request)
        body = {
            **period,
            "lines": rows,
            "opening": sum(row.opening_micro for row in rows),
            "credits": sum(row.credits_micro for row in rows),
            "debits": sum(row.debits_micro for row in rows),
            "closing": sum(row.closing_micro for row in rows),
        }
        return Response(self.OutputSerializer(body).data)


class StatementCsvApi(APIView):
    """The caller org's statement as CSV: one row per account and a total row."""

    required_scope = Scope.READ

    @extend_schema(
        operation_id="statements_csv",
        parameters=STATEMENT_PARAMETERS,
        responses={(200, "text/csv"): OpenApiTypes.STR},
        tags=["settlement"],
        examples=[
            OpenApiExample(
                "One day",
                value="account,currency,opening,credits,debits,closing\r\n"
                "escrow,USD,20.000000,0.000000,7.500000,12.500000\r\n"
                "total,USD,20.000000,0.000000,7.500000,12.500000\r\n",
                response_only=True,
                media_type="text/csv",
            )
        ],
    )
    def get(self, request):
        period, rows = _statement_for(request)
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["account", "currency", "opening", "credits", "debits", "closing"])
        totals: dict[str, list[int]] = {}
        for row in rows:
            figures = [row.opening_micro, row.credits_micro, row.debits_micro, row.closing_micro]
            writer.writerow([row.account_kind, row.currency, *map(money_format, figures)])
            running = totals.setdefault(row.currency, [0, 0, 0, 0])
            for i, figure in enumerate(figures):
                running[i] += figure
        for currency, figures in sorted(totals.items()):
            writer.writerow(["total", currency, *map(money_format, figures)])
        start, end = period["period_start"], period["period_end"]
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="statement-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.csv"'
        )
        return response
