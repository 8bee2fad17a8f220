"""Settlement's writes. Import from here; the submodules are an implementation detail."""

from settlement.services.checks import ledger_check
from settlement.services.holds import (
    HoldCapture,
    hold_capture,
    hold_place,
    hold_release,
    holds_capture_batch,
)
from settlement.services.ledger import (
    Posting,
    ledger_adjust,
    ledger_post,
    ledger_post_durable,
    org_account,
    platform_account,
    transfer,
)
from settlement.services.payouts import (
    payout_account_connect,
    payout_request,
    payout_retry,
    payout_send,
    payouts_schedule,
    withdrawal_request,
    withdrawal_send,
)
from settlement.services.reconciliation import discrepancy_resolve, reconcile_period
from settlement.services.settlement_runs import settlement_run
from settlement.services.stripe_events import (
    stripe_event_mark_failed,
    stripe_event_process,
    stripe_event_record,
    stripe_events_redrive,
)
from settlement.services.topups import topup_create
from settlement.services.usage import (
    UsageInput,
    UsageResult,
    entitlement_deliver,
    usage_ingest,
    usage_meter,
)

__all__ = [
    "HoldCapture",
    "Posting",
    "UsageInput",
    "UsageResult",
    "discrepancy_resolve",
    "entitlement_deliver",
    "hold_capture",
    "hold_place",
    "hold_release",
    "holds_capture_batch",
    "ledger_adjust",
    "ledger_check",
    "ledger_post",
    "ledger_post_durable",
    "org_account",
    "payout_account_connect",
    "payout_request",
    "payout_retry",
    "payout_send",
    "payouts_schedule",
    "platform_account",
    "reconcile_period",
    "settlement_run",
    "stripe_event_mark_failed",
    "stripe_event_process",
    "stripe_event_record",
    "stripe_events_redrive",
    "topup_create",
    "transfer",
    "usage_ingest",
    "usage_meter",
    "withdrawal_request",
    "withdrawal_send",
]
