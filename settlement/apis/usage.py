"""REST API for what was bought and used: entitlements, usage ingestion, a buyer's credit."""

import gc
import re
import threading
import time
from contextlib import contextmanager
from datetime import datetime

import orjson
from django.utils import timezone
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, extend_schema
from rest_framework import serializers
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.models import Scope
from core.api import (
    CreatedAtCursorPagination,
    MoneyField,
)
from core.units import money_format
from settlement import selectors
from settlement.models import Entitlement
from settlement.services.usage import MAX_BATCH_RECORDS, REJECTION_CODES, UsageInput, usage_ingest


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


_ORJSON_PASSTHROUGH = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_PASSTHROUGH_DATACLASS


class _AnswerRenderer(JSONRenderer):
    """JSONRenderer writing a batch's answer with orjson, to the same bytes, several times faster.

    Only the 200 answer, a dict of strings, integers, booleans and None that orjson writes as
    JSONRenderer does (compact, UTF-8); anything else (an error, an indented rendering asked
    for, a value orjson refuses, U+2028 or U+2029, which JSONRenderer escapes) is left to it.
    """

    def render(self, data, accepted_media_type=None, renderer_context=None):
        renderer_context = renderer_context or {}
        response = renderer_context.get("response")
        if (
            type(data) is dict
            and response is not None
            and response.status_code == 200
            and not self.get_indent(accepted_media_type, renderer_context)
        ):
            try:
                # Times and dataclasses left to JSONRenderer, which writes them its own way.
                rendered = orjson.dumps(data, option=_ORJSON_PASSTHROUGH)
            except TypeError:
                rendered = None
            if (
                rendered is not None
                and b"\xe2\x80\xa8" not in rendered
                and b"\xe2\x80\xa9" not in rendered
            ):
                return rendered
        return super().render(data, accepted_media_type, renderer_context)


class UsageIngestApi(APIView):
    """Report a batch of usage; each record is answered accepted, duplicate or rejected."""

    required_scope = Scope.USAGE_WRITE
    renderer_classes = [_AnswerRenderer]

    class InputSerializer(serializers.Serializer):
        class RecordSerializer(serializers.Serializer):
            request_id = serializers.RegexField(
                r"^[!-~]{1,128}$",
                help_text="Your id of the request, 1-128 visible ASCII characters. Unique per "
                "reporting org and side: a record sent again is answered with the first result. "
                "For a request the relay sent you, its `X-Request-Id` (`relay_` and 32 hex "
                "digits): the relay meters it, and your record checks that figure.",
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
        with _collector_paused():
            return Response(self._ingest(request))

    def _ingest(self, request) -> dict:
        parsed = _batch_parse(_body_read(request))
        if parsed is None:
            # Something the quick reading does not take: the serializer decides, and words the
            # errors (or reads what the quick reading left to it).
            data = self.InputSerializer(data=request.data)
            data.is_valid(raise_exception=True)
            parsed = (
                [UsageInput(**record) for record in data.validated_data["records"]],
                data.validated_data.get("source"),
            )
        records, source = parsed
        results = usage_ingest(principal=request.auth, records=records, source=source)
        counts = {status: 0 for status in ("accepted", "duplicate", "rejected")}
        for result in results:
            counts[result.status] += 1
        body = {
            "accepted": counts["accepted"],
            "duplicates": counts["duplicate"],
            "rejected": counts["rejected"],
            "results": _results_output(results),
        }
        return body


# A batch keeps some ten thousand objects alive (its records as read, as written and as
# answered) while it is processed, and the collector counts each one: it ran a full collection,
# which follows every object of the process (some 150,000 in a worker), every ten batches, and
# these collections cost more CPU than anything else in a batch's Python (about 10 us a
# record). None of a batch's objects are in reference cycles (they are freed by their counts as
# the answer is written), so automatic collection waits while batches are processed and runs,
# as often as its thresholds say, between them. The pause is process-wide: it ends when the
# last batch in progress in any thread ends, and only if the collector was on when the first
# began, so a process that turned it off keeps it off. Under a load that never leaves a worker
# without a batch in progress, the pause would never end and cycles made by anything else in
# the process would pile up: a batch that ends when the pause has lasted COLLECT_AT_LEAST_EVERY_S
# runs a full collection itself (some 100 ms in a busy worker, once per that many seconds).
COLLECT_AT_LEAST_EVERY_S = 10.0
_collector_lock = threading.Lock()
_batches_in_progress = 0
_collector_was_enabled = False
_paused_since = 0.0


@contextmanager
def _collector_paused():
    global _batches_in_progress, _collector_was_enabled, _paused_since
    with _collector_lock:
        if _batches_in_progress == 0:
            _collector_was_enabled = gc.isenabled()
            _paused_since = time.monotonic()
            gc.disable()
        _batches_in_progress += 1
    try:
        yield
    finally:
        is_collection_due = False
        with _collector_lock:
            _batches_in_progress -= 1
            if _batches_in_progress == 0 and _collector_was_enabled:
                gc.enable()
            elif _collector_was_enabled and (
                time.monotonic() - _paused_since >= COLLECT_AT_LEAST_EVERY_S
            ):
                is_collection_due = True
                _paused_since = time.monotonic()
        if is_collection_due:
            gc.collect()


# A batch of 1,000 records through the nested serializers cost more than storing and metering
# it: some 290,000 field checks in and 11,000 field renderings out. The common case (a JSON
# object of well-typed records) is read and written here in plain Python, to the same values
# and the same wire format as UsageIngestApi's serializers, which stay the schema and handle
# every other input, so every error keeps the serializer's codes, fields and messages.
_REQUEST_ID = re.compile(r"[!-~]{1,128}")
_TEXT_LIMITS = (("market", 32), ("counterparty", 140), ("model", 120))
_SOURCES = frozenset({"provider", "buyer"})
_DATETIME = serializers.DateTimeField()
_UTF_8 = frozenset({"utf-8", "utf8"})


def _body_read(request):
    """The JSON body read with orjson when it is UTF-8 JSON orjson takes, else request.data.

    orjson reads what it takes to the same values as the JSON parser does, except that it
    makes integers past 64 bits floats, which `_batch_parse` refuses, so such a body, and every
    body orjson refuses, goes to the serializer through request.data and JSONParser as before.
    """
    django_request = request._request
    charset = django_request.content_params.get("charset")
    if django_request.content_type != "application/json" or (
        charset is not None and charset.lower() not in _UTF_8
    ):
        return request.data
    try:
        return orjson.loads(django_request.body)
    except orjson.JSONDecodeError:
        return None


def _batch_parse(data) -> tuple[list[UsageInput], str | None] | None:
    """The batch's records and source, or None when the serializer has to read it."""
    if type(data) is not dict:
        return None
    source = data.get("source")
    if source is not None and not (type(source) is str and source in _SOURCES):
        return None
    if "source" in data and source is None:  # null: the serializer refuses it
        return None
    items = data.get("records")
    if type(items) is not list or not 1 <= len(items) <= MAX_BATCH_RECORDS:
        return None
    read = _RecordReader(timezone.get_current_timezone())
    records = []
    for item in items:
        record = read(item)
        if record is None:
            return None
        records.append(record)
    return records, source


class _RecordReader:
    """Reads records as RecordSerializer does; None for anything it might word an error on.

    The records of a batch mostly repeat their market, counterparty and model, and often their
    times: a value checked (or parsed) once is not checked again within the batch.
    """

    def __init__(self, zone):
        self.zone = zone
        self.texts_read = {name: set() for name, _ in _TEXT_LIMITS}
        self.times_read: dict[str, datetime | None] = {}

    def __call__(self, item) -> UsageInput | None:
        if type(item) is not dict:
            return None
        request_id = item.get("request_id")
        if type(request_id) is not str or _REQUEST_ID.fullmatch(request_id) is None:
            return None
        for name, limit in _TEXT_LIMITS:
            value = item.get(name)
            if type(value) is not str:
                return None
            if value in self.texts_read[name]:
                continue
            # ASCII without NUL and surrounding whitespace: what CharField keeps unchanged.
            if (
                not 0 < len(value) <= limit
                or not value.isascii()
                or "\x00" in value
                or value.strip() != value
            ):
                return None
            self.texts_read[name].add(value)
        input_tokens, output_tokens = item.get("input_tokens"), item.get("output_tokens")
        if type(input_tokens) is not int or type(output_tokens) is not int:
            return None
        cached = item.get("cached_input_tokens", 0)
        is_estimated = item.get("is_estimated", False)
        if type(cached) is not int or type(is_estimated) is not bool:
            return None
        started_at = self.time(item.get("started_at"))
        ended_at = self.time(item.get("ended_at"))
        if started_at is None or ended_at is None:
            return None
        return UsageInput(
            request_id=request_id,
            market=item["market"],
            counterparty=item["counterparty"],
            model=item["model"],
            input_tokens=input_tokens,
            cached_input_tokens=cached,
            output_tokens=output_tokens,
            started_at=started_at,
            ended_at=ended_at,
            is_estimated=is_estimated,
        )

    def time(self, value) -> datetime | None:
        if type(value) is not str:
            return None
        try:
            return self.times_read[value]
        except KeyError:
            parsed = self.times_read[value] = _datetime_parse(value, self.zone)
            return parsed


def _datetime_parse(value: str, zone) -> datetime | None:
    """An ISO 8601 time with its offset, in the current time zone as DateTimeField gives it."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    if parsed.tzinfo is None or parsed.utcoffset() is None:  # naive: left to the serializer
        return None
    try:
        return parsed.astimezone(zone)
    except OverflowError:
        return None


def _results_output(results) -> list[dict]:
    """The results as ResultSerializer writes them, built as plain dicts."""
    times: dict = {}  # most records of a batch share their received_at
    money: dict[int, str] = {}  # and most of their amounts (zero, the price)
    output = []
    for result in results:
        record = result.record
        if record is not None:
            received_at = record.received_at
            shown = times.get(received_at)
            if shown is None:
                shown = times[received_at] = _DATETIME.to_representation(received_at)
            amounts = []
            for micro in (record.payg_price_micro, record.payg_cost_micro, record.unfunded_micro):
                written = money.get(micro)
                if written is None:
                    written = money[micro] = money_format(micro)
                amounts.append(written)
            record = {
                "id": record.id,
                "source": record.source,
                "is_primary": record.is_primary,
                "billable_tokens": record.billable_tokens,
                "entitlement_tokens": record.entitlement_tokens,
                "payg_tokens": record.payg_tokens,
                "payg_price": amounts[0],
                "payg_cost": amounts[1],
                "unfunded_tokens": record.unfunded_tokens,
                "unfunded": amounts[2],
                "received_at": shown,
            }
        output.append(
            {
                "index": result.index,
                "request_id": result.request_id,
                "status": result.status,
                "code": result.code,
                "message": result.message,
                "record": record,
            }
        )
    return output


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
