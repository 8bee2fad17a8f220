"""What every REST endpoint shares: the error shape, money fields, the Idempotency-Key header.

Every failure, whatever raised it, leaves as
    {"error": {"code": "<stable_code>", "message": "<for people>", "fields": {"<field>": ["..."]}}}
with the status that fits (STYLE.md section 6). Clients switch on `code`, never on `message`.
"""

import logging
import math
import re

from django.core.exceptions import PermissionDenied as DjangoPermissionDenied
from django.http import Http404, JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema_field
from rest_framework import exceptions, serializers, status
from rest_framework.pagination import CursorPagination
from rest_framework.response import Response

from core.errors import ApplicationError
from core.units import UnitError, money_format, money_parse

logger = logging.getLogger(__name__)

_DRF_CODES = {
    exceptions.ParseError: "malformed_request",
    exceptions.AuthenticationFailed: "unauthenticated",
    exceptions.NotAuthenticated: "unauthenticated",
    exceptions.PermissionDenied: "permission_denied",
    exceptions.NotFound: "not_found",
    exceptions.MethodNotAllowed: "method_not_allowed",
    exceptions.NotAcceptable: "not_acceptable",
    exceptions.UnsupportedMediaType: "unsupported_media_type",
    exceptions.Throttled: "throttled",
    exceptions.ValidationError: "invalid",
}


def error_body(code: str, message: str, fields: dict | None = None) -> dict:
    return {"error": {"code": code, "message": message, "fields": fields or {}}}


def _flatten_fields(detail) -> dict:
    """DRF's nested error detail as {field: [messages]}; nested fields are joined with dots."""
    if isinstance(detail, dict):
        flat: dict = {}
        for key, value in detail.items():
            inner = _flatten_fields(value)
            if isinstance(value, dict):
                for sub_key, messages in inner.items():
                    flat[f"{key}.{sub_key}"] = messages
            else:
                flat[key] = inner.get("", [])
        return flat
    if isinstance(detail, list):
        messages: list[str] = []
        nested: dict = {}
        for index, item in enumerate(detail):
            if isinstance(item, dict):
                for sub_key, sub_messages in _flatten_fields(item).items():
                    nested[f"{index}.{sub_key}"] = sub_messages
            else:
                messages.append(str(item))
        return {"": messages, **nested} if nested else {"": messages}
    return {"": [str(detail)]}


def exception_handler(exc, context):
    """DRF's EXCEPTION_HANDLER: map every error to the one shape."""
    if isinstance(exc, ApplicationError):
        return Response(error_body(exc.code, exc.message, exc.fields), status=int(exc.status))
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, DjangoPermissionDenied):
        exc = exceptions.PermissionDenied()
    if not isinstance(exc, exceptions.APIException):
        return None  # a real bug: let Django log it and answer 500 through handler500
    code = next((c for cls, c in _DRF_CODES.items() if isinstance(exc, cls)), "error")
    headers = {}
    if getattr(exc, "auth_header", None):
        headers["WWW-Authenticate"] = exc.auth_header
    if isinstance(exc, exceptions.Throttled) and exc.wait is not None:
        # DRF has already rounded the wait up to whole seconds; never tell a client to retry at 0.
        headers["Retry-After"] = str(max(1, math.ceil(exc.wait)))
    if isinstance(exc, exceptions.ValidationError):
        fields = _flatten_fields(exc.detail)
        general = fields.pop("", None) or fields.pop("non_field_errors", None)
        message = general[0] if general else "Some fields are not valid."
        body = error_body(code, message, fields)
    else:
        body = error_body(code, str(exc.detail))
    return Response(body, status=exc.status_code, headers=headers)


def json_404(request, exception=None):
    """handler404 for /api/ paths, so unknown URLs keep the error shape."""
    return JsonResponse(error_body("not_found", "No such endpoint."), status=404)


def json_500(request):
    logger.error("unhandled error on %s", request.path)
    return JsonResponse(
        error_body("internal_error", "Something went wrong on our side; it has been logged."),
        status=500,
    )


@extend_schema_field({"type": "string", "format": "decimal", "example": "50.000000"})
class MoneyField(serializers.Field):
    """Micro-USD on the inside, a decimal USD string with six places on the wire."""

    default_error_messages = {"invalid": "{message}"}

    def __init__(self, *, places: int = 6, **kwargs):
        self.places = places
        super().__init__(**kwargs)

    def to_internal_value(self, data) -> int:
        try:
            return money_parse(data, places=self.places)
        except UnitError as error:
            self.fail("invalid", message=str(error))

    def to_representation(self, value: int) -> str:
        return money_format(value)


class CreatedAtCursorPagination(CursorPagination):
    """Stable pages over append-mostly tables: newest first, by id so ties never reorder."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 500
    ordering = "-id"

    def decode_cursor(self, request):
        # DRF answers a cursor it cannot read with 404, as if the whole list were gone; it is a
        # bad parameter, so say which one.
        try:
            return super().decode_cursor(request)
        except exceptions.NotFound:
            raise exceptions.ValidationError(
                {self.cursor_query_param: ["Use the cursor from a previous page's next link."]}
            ) from None


_IDEMPOTENCY_KEY = re.compile(r"^[A-Za-z0-9_\-:.]{8,128}$")

IDEMPOTENCY_KEY_PARAMETER = OpenApiParameter(
    name="Idempotency-Key",
    type=OpenApiTypes.STR,
    location=OpenApiParameter.HEADER,
    required=False,
    description=(
        "8-128 characters of [A-Za-z0-9_-:.]. A retry with the same key returns the first answer; "
        "the same key with different parameters is refused with 409 idempotency_key_reused."
    ),
)


def idempotency_key_from(request) -> str | None:
    """The request's Idempotency-Key header, validated; None when the client sent none."""
    raw = request.headers.get("Idempotency-Key")
    if raw is None:
        return None
    if not _IDEMPOTENCY_KEY.match(raw):
        raise exceptions.ValidationError(
            {"Idempotency-Key": ["must be 8-128 characters of letters, digits, _ - : ."]}
        )
    return raw


def created(data) -> Response:
    return Response(data, status=status.HTTP_201_CREATED)
