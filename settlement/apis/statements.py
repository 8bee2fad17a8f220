"""REST API for settlement's results: discrepancies and statements (JSON and CSV)."""

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
    CreatedAtCursorPagination,
    MoneyField,
)
from settlement import selectors
from settlement.models.settlement import Discrepancy


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
        csv.writer(out).writerows(selectors.statement_csv_rows(rows))
        start, end = period["period_start"], period["period_end"]
        response = HttpResponse(out.getvalue(), content_type="text/csv; charset=utf-8")
        response["Content-Disposition"] = (
            f'attachment; filename="statement-{start:%Y%m%dT%H%M}-{end:%Y%m%dT%H%M}.csv"'
        )
        return response
