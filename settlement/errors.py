from core.errors import ApplicationError, Conflict, NotFound, UpstreamUnavailable


class UnbalancedTransaction(ApplicationError):
    code = "unbalanced_transaction"
    default_message = "Ledger entries must sum to zero."


class HoldNotFound(NotFound):
    code = "hold_not_found"
    default_message = "No such hold."


class HoldExceeded(Conflict):
    code = "hold_exceeded"
    default_message = "The amount is more than what remains on the hold."


class AdjustmentNotAllowed(ApplicationError):
    code = "adjustment_not_allowed"
    default_message = "This adjustment is not allowed."


class TopUpNotFound(NotFound):
    code = "topup_not_found"
    default_message = "No such top-up."


class TopUpAmountOutOfRange(ApplicationError):
    code = "amount_out_of_range"
    default_message = "The amount is outside the allowed range."


class PaymentProviderError(UpstreamUnavailable):
    code = "payment_provider_unavailable"
    default_message = "The payment provider did not answer; nothing was charged. Retry."


class PaymentMethodNotAllowed(ApplicationError):
    code = "payment_method_not_allowed"
    default_message = "Server-side confirmation with a test payment method is off here."


class WebhookSignatureInvalid(ApplicationError):
    code = "invalid_signature"
    default_message = "The Stripe-Signature header does not verify."
