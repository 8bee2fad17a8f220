"""Pay-as-you-go captures, booked in batches after the requests they charge have settled.

Settling a pay-as-you-go request fixes its cost in the same transaction that records it: the
excess of the worst case goes back to the buyer's `available`, and the cost stays held under the
request's own hold, so it can be spent on nothing else (the buyer is charged; no later request
can overspend it). Moving that cost from `held` to the provider's `earned` and the platform's
`fees` is left to this module, a batch at a time.

Why not in the settle: `earned` of a provider and `fees` are one row each, shared by every buyer's
request, and a row lock is held until commit. Posting to them in each settle made every request
of every relay process queue behind the one before it (about 50 settles a second, whatever the
number of threads or processes). A batch locks them once for many captures.

Each process queues what it settled (in memory, after commit) and a flush books the queue in one
transaction of a few statements (settlement's `holds_capture_batch`): one ledger transaction per
capture under `hold_capture`'s own key, so a capture happens once even when the stale sweep
books the same hold. What a process left queued when it died is
still held, and recorded in its RelayRequest: the stale sweep captures it (relay.services).
"""

import logging
import threading
from dataclasses import dataclass

from django.db import transaction

from core.units import bp_floor
from settlement.models import LedgerAccount, LedgerTransaction
from settlement.services import Posting
from settlement.services.batch import org_accounts_bulk
from settlement.services.holds import HoldCapture, holds_capture_batch
from settlement.services.ledger import platform_account

logger = logging.getLogger(__name__)

Kind = LedgerAccount.Kind

# A flush is due this long after the first capture queued, or at once past this many.
FLUSH_EVERY_S = 0.2
FLUSH_AT_CAPTURES = 200


@dataclass(frozen=True)
class Capture:
    """The cost of one settled request, still held under its hold, to pay its provider."""

    hold_reference: str
    provider_org_id: int
    cost_micro: int
    provider_fee_bp: int


_lock = threading.Lock()
_queued: list[Capture] = []
# One flush at a time per process: a caller that finds one running waits for it, so when it
# returns, everything queued before the call is booked.
_flushing = threading.Lock()


def capture_enqueue(capture: Capture) -> int:
    """Queue a settled request's capture, once its settle committed; returns the queue size."""
    with _lock:
        _queued.append(capture)
        return len(_queued)


def captures_queued() -> int:
    with _lock:
        return len(_queued)


def captures_discard() -> None:
    """Forget what is queued (tests: what one test queued is not the next one's)."""
    with _lock:
        _queued.clear()


def relay_captures_flush() -> int:
    """Book every queued capture; returns how many were booked. Own transactions.

    One transaction for the batch; if it fails, each capture is tried in a transaction of its
    own, and one that still fails stays held for the stale sweep (logged), so a single bad
    capture never holds the others back.
    """
    with _flushing:
        with _lock:
            taken = list(_queued)
            _queued.clear()
        if not taken:
            return 0
        try:
            with transaction.atomic(durable=True):
                _book(taken)
            return len(taken)
        except Exception:
            logger.exception("relay capture batch of %d failed; booking one by one", len(taken))
        booked = 0
        for capture in taken:
            try:
                with transaction.atomic(durable=True):
                    _book([capture])
                booked += 1
            except Exception:
                logger.exception("relay capture of %s left for the stale sweep", capture)
        return booked


def capture_book(capture: Capture) -> None:
    """Book one capture inside the caller's transaction (the stale sweep's path)."""
    _book([capture])


def _book(captures: list[Capture]) -> None:
    """Capture each cost from its hold to its provider (less the fee), a batch at a time.

    The same move and key as a single `hold_capture(capture_key="settle")`, so the stale sweep
    and a flush never both book one request.
    """
    fees_id = platform_account(kind=Kind.FEES).id
    earned = org_accounts_bulk(org_ids={c.provider_org_id for c in captures}, kinds=[Kind.EARNED])
    specs = []
    for capture in captures:
        fee = bp_floor(capture.cost_micro, capture.provider_fee_bp)
        postings = [
            Posting(earned[(capture.provider_org_id, Kind.EARNED)].id, capture.cost_micro - fee),
            Posting(fees_id, fee),
        ]
        specs.append(
            HoldCapture(
                reference=capture.hold_reference,
                postings=[posting for posting in postings if posting.amount_micro],
                capture_key="settle",
                kind=LedgerTransaction.Kind.PAYG,
            )
        )
    holds_capture_batch(captures=specs)
