"""Settlement's writes. Import from here; the submodules are an implementation detail."""

from settlement.services.checks import ledger_check
from settlement.services.holds import hold_capture, hold_place, hold_release
from settlement.services.ledger import (
    Posting,
    ledger_adjust,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)
from settlement.services.stripe_events import (
    stripe_event_mark_failed,
    stripe_event_process,
    stripe_event_record,
    stripe_events_redrive,
)
from settlement.services.topups import topup_create

__all__ = [
    "Posting",
    "hold_capture",
    "hold_place",
    "hold_release",
    "ledger_adjust",
    "ledger_check",
    "ledger_post",
    "org_account",
    "platform_account",
    "stripe_event_mark_failed",
    "stripe_event_process",
    "stripe_event_record",
    "stripe_events_redrive",
    "topup_create",
    "transfer",
]
