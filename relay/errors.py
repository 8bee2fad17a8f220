"""The relay's refusals. Each is an ApplicationError with the OpenAI error `type` and a `param`.

The gateway writes them in the OpenAI error shape, `{"error": {"message", "type", "code",
"param"}}`, because the relay's clients are OpenAI clients.
"""

from http import HTTPStatus

from core.errors import ApplicationError


class RelayError(ApplicationError):
    type = "invalid_request_error"

    def __init__(self, message: str | None = None, *, param: str | None = None, **extra):
        super().__init__(message, **extra)
        self.param = param


class BadRequest(RelayError):
    code = "invalid_request"
    default_message = "The request body is not valid."


class InvalidApiKey(RelayError):
    code = "invalid_api_key"
    status = HTTPStatus.UNAUTHORIZED
    type = "authentication_error"
    default_message = "Send an API key of this exchange as `Authorization: Bearer txk_…`."


class MissingScope(RelayError):
    code = "missing_scope"
    status = HTTPStatus.FORBIDDEN
    type = "permission_error"
    default_message = "This API key lacks the `relay` scope."


class ModelNotFound(RelayError):
    code = "model_not_found"
    status = HTTPStatus.NOT_FOUND
    default_message = "No market trades this model."


class RegionRequired(RelayError):
    code = "region_required"
    default_message = "This model trades in several regions: send `X-Region` or set a default."


class InsufficientFunds(RelayError):
    code = "insufficient_funds"
    status = HTTPStatus.PAYMENT_REQUIRED
    type = "insufficient_quota"
    default_message = "Neither entitlements nor the available balance cover this request."


class BudgetExceeded(RelayError):
    code = "budget_exceeded"
    status = HTTPStatus.PAYMENT_REQUIRED
    type = "insufficient_quota"
    default_message = "This API key's spend cap does not cover this request."


class RateLimited(RelayError):
    code = "rate_limit_exceeded"
    status = HTTPStatus.TOO_MANY_REQUESTS
    type = "rate_limit_error"
    default_message = "This API key's rate limit is reached."

    def __init__(self, message: str | None = None, *, retry_after_s: int, **extra):
        super().__init__(message, **extra)
        self.retry_after_s = retry_after_s


class NoHealthyProvider(RelayError):
    code = "no_healthy_provider"
    status = HTTPStatus.SERVICE_UNAVAILABLE
    type = "server_error"
    default_message = "No provider in this market could serve the request; nothing was charged."
