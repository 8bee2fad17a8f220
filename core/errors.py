"""The one exception family for broken business rules.

Services raise a subclass of ApplicationError with a stable `code`; the API turns it into the one
error shape (core.api), the portal shows its message on the form, and admin actions report it.
"""

from http import HTTPStatus


class ApplicationError(Exception):
    code = "application_error"
    status = HTTPStatus.BAD_REQUEST
    default_message = "The request could not be completed."

    def __init__(self, message: str | None = None, *, fields: dict | None = None, **extra):
        self.message = message or self.default_message
        self.fields = fields or {}
        self.extra = extra
        super().__init__(self.message)


class ValidationFailed(ApplicationError):
    code = "invalid"
    default_message = "Some fields are not valid."


class NotFound(ApplicationError):
    code = "not_found"
    status = HTTPStatus.NOT_FOUND
    default_message = "Not found."


class Conflict(ApplicationError):
    code = "conflict"
    status = HTTPStatus.CONFLICT
    default_message = "The request conflicts with the current state."


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"
    default_message = "This Idempotency-Key was already used with different parameters."


class InsufficientFunds(ApplicationError):
    code = "insufficient_funds"
    status = HTTPStatus.PAYMENT_REQUIRED
    default_message = "The available balance does not cover this amount."


class PermissionDenied(ApplicationError):
    code = "permission_denied"
    status = HTTPStatus.FORBIDDEN
    default_message = "You do not have permission to do this."


class UpstreamUnavailable(ApplicationError):
    code = "upstream_unavailable"
    status = HTTPStatus.BAD_GATEWAY
    default_message = "A payment or provider service did not answer; nothing was charged. Retry."
