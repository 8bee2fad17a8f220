from core.errors import ApplicationError, Conflict, NotFound, UpstreamUnavailable, ValidationFailed


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


class PayoutAccountMissing(Conflict):
    code = "payout_account_missing"
    default_message = "Connect a Stripe account first (POST /api/v1/payout-account)."


class PayoutAccountNotReady(Conflict):
    code = "payout_account_not_ready"
    default_message = "Finish Stripe's onboarding before requesting a payout."


class NotAProvider(ApplicationError):
    code = "not_a_provider"
    status = 403  # as core.errors.PermissionDenied
    default_message = "Only provider orgs are paid out."


class PayoutNotRetryable(Conflict):
    code = "payout_not_retryable"
    default_message = "Only a failed or reversed payout can be sent again."


class WithdrawalExceedsRefundable(Conflict):
    code = "withdrawal_exceeds_refundable"
    default_message = "Only money paid by card and not refunded yet can be withdrawn."


class UsageSourceRequired(ApplicationError):
    code = "usage_source_required"
    default_message = "Your org both buys and provides: say which side this usage is from."


class UsageSourceNotAllowed(ApplicationError):
    code = "usage_source_not_allowed"
    status = 403  # as core.errors.PermissionDenied
    default_message = "Your org cannot report usage from that side."


class UsageBatchTooLarge(ApplicationError):
    code = "usage_batch_too_large"
    default_message = "A usage batch holds at most 1,000 records."


class CreditNotAProvider(ApplicationError):
    code = "not_a_provider"
    status = 403  # as core.errors.PermissionDenied
    default_message = "Only a provider org can ask for a buyer's credit."


class CreditBuyerNotFound(NotFound):
    code = "buyer_not_found"
    default_message = "No such buyer with entitlements from you in this market."


class UsageMarketNotFound(NotFound):
    code = "market_not_found"
    default_message = "No such market."


class DiscrepancyNotFound(NotFound):
    code = "discrepancy_not_found"
    default_message = "No such discrepancy."


class DiscrepancyResolved(Conflict):
    code = "discrepancy_resolved"
    default_message = "This discrepancy is already resolved; its figure stands."


class SettlementPeriodInvalid(ValidationFailed):
    code = "settlement_period_invalid"
    default_message = "A settlement period is whole UTC hours, and ends after it starts."


class SettlementRunFailed(ApplicationError):
    code = "settlement_check_failed"
    status = 500
    default_message = "ledger_check found a breach; the run paid nothing and is marked failed."
