"""Settlement's data: the ledger, holds, Stripe top-ups and the Stripe events that fund them.

Ledger (ledger.py)
- `LedgerAccount`: one per (org, kind, currency), and one per (kind, currency) for the platform.
  The balance is kept in the row so a posting can lock it and reads are cheap; it always equals the
  sum of the account's entries (`manage.py ledger_check` proves it).
- `LedgerTransaction`: one business event (a top-up, a hold, a trade…). Its entries sum to zero.
- `LedgerEntry`: a signed amount on one account. Positive adds to the balance. Append only:
  corrections are new transactions. On PostgreSQL, triggers reject UPDATE/DELETE and (deferred to
  commit) any transaction whose entries do not sum to zero.
- `Hold`: money set aside from `available` into `held` for one purpose (a bid, a relay request),
  named by a unique reference. held balance = sum of open holds' remaining amounts.

Entitlements (entitlements.py)
- `Entitlement`: the tokens one trade bought, with the contract terms copied from it; usage draws
  it down. The buyer's escrow equals the unused value of its open entitlements.

Payments (payments.py)
- `StripeEvent`: every verified webhook, stored once by Stripe's event id before it is acted on.
- `TopUp`: a buyer's card payment. Credited only when a verified webhook says it succeeded.

Usage (usage.py)
- `UsageRecord`: one request's tokens as one source (provider, buyer, relay) reported them,
  unique per (source, source org, request id). At most one primary record per (provider,
  request id) draws down and is charged; the others check it. A primary record's billable
  tokens = entitlement tokens + pay-as-you-go tokens + unfunded tokens.
- `UsageDraw`: the tokens one primary record drew from one entitlement, with the hour (UTC) its
  record ended in; an entitlement's tokens_used is at least the sum of its draws (the relay
  also draws directly).
- `PaygMeter`: a pair's pay-as-you-go totals and rounding remainder per market, so charges
  round cumulatively.

Payouts and withdrawals (payouts.py)
- `PayoutAccount`: a provider org's Stripe connected account (one per org), its onboarding
  status, its payout minimum and schedule.
- `Payout`: earnings sent to that account as a Stripe transfer. Requesting one moves `earned` to
  `payout_pending` with the row; Stripe's transfer event moves it on to `stripe_clearing`, a
  failure or a reversal back to `earned`. An org's payout_pending equals its payouts in flight.
- `Withdrawal`: a buyer's unused balance refunded to its cards, held from `available` under the
  hold `withdrawal:<id>`; `WithdrawalRefund` is its refund against one top-up, never more than
  that top-up's unrefunded amount. Succeeded refunds are also counted in `TopUp.refunded_micro`.

Settlement runs and reconciliation (settlement.py)
- `SettlementRun`: the settlement of one period, unique per (start, end), committed with the
  money it moved (succeeded) or, when ledger_check found a breach, with nothing but its problems
  (failed). Its totals say what it paid, refunded, forfeited and booked to rounding.
- `SettledUsage`: tokens one run paid (or waived by a resolution) of one entitlement's draws in
  one hour. Draws not covered by these rows are what is still to pay; an entitlement's charged
  money is floor(paid tokens x price / 10^6), cumulatively.
- `Discrepancy`: a buyer x provider x market x hour whose reports disagree past the market's
  tolerance, or whose other report never came; it holds the hour until staff resolve it.
- `StatementLine`: one org account over a run's period; opening + credits - debits = closing.
- `SettlementAudit`: every staff action on settlement, with its actor and reason.
"""

from settlement.models.entitlements import Entitlement
from settlement.models.ledger import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.models.payments import StripeEvent, TopUp
from settlement.models.payouts import Payout, PayoutAccount, Withdrawal, WithdrawalRefund
from settlement.models.settlement import (
    Discrepancy,
    SettledUsage,
    SettlementAudit,
    SettlementRun,
    StatementLine,
)
from settlement.models.usage import (
    PaygMeter,
    UsageDraw,
    UsageRecord,
    UsageSource,
    is_relay_request_id,
    relay_hold_reference,
    relay_request_id_new,
)

__all__ = [
    "Discrepancy",
    "Entitlement",
    "Hold",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerTransaction",
    "PaygMeter",
    "Payout",
    "PayoutAccount",
    "SettledUsage",
    "SettlementAudit",
    "SettlementRun",
    "StatementLine",
    "StripeEvent",
    "TopUp",
    "UsageDraw",
    "UsageRecord",
    "UsageSource",
    "Withdrawal",
    "WithdrawalRefund",
    "is_relay_request_id",
    "relay_hold_reference",
    "relay_request_id_new",
]
