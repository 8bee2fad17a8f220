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
"""

from settlement.models.entitlements import Entitlement
from settlement.models.ledger import Hold, LedgerAccount, LedgerEntry, LedgerTransaction
from settlement.models.payments import StripeEvent, TopUp

__all__ = [
    "Entitlement",
    "Hold",
    "LedgerAccount",
    "LedgerEntry",
    "LedgerTransaction",
    "StripeEvent",
    "TopUp",
]
