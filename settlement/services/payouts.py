"""Provider payouts (Stripe Connect transfers) and buyer withdrawals (refunds to their cards).

No network call runs inside a database transaction. Each one is short steps:
1. commit the intent with its ledger move: a `pending` Payout with earned → payout_pending, or a
   `pending` Withdrawal with its refunds and a hold (available → held);
2. a task claims the row with a conditional UPDATE (a lease, so a crashed sender's claim runs
   out) and calls Stripe with an idempotency key built from the row id;
3. the answer is recorded in a new transaction.
A refusal (Stripe's 4xx) returns the money at once. An outage leaves the row pending for the
task's retries and the periodic resend; Stripe's idempotency makes a second call replay the first.

What finishes each one:
- A payout is confirmed only by Stripe's verified transfer event (`transfer.created`, and any
  later `transfer.updated` / `transfer.reversed`, each carrying the whole transfer): the first
  snapshot moves payout_pending → stripe_clearing, and `amount_reversed` (cumulative) moves what
  Stripe took back from stripe_clearing to earned. Stripe has no transfer.paid or
  transfer.failed events since transfers and payouts were split (API 2017-04-06): a transfer to a
  connected account either is refused when created or exists. The connected account's own
  `payout.paid` / `payout.failed` are about its bank; a failed bank payout returns the money to
  that account's Stripe balance, not to us, so booking it back to `earned` would pay twice.
  They are stored and ignored.
- A withdrawal's refund is confirmed by Stripe's answer to the refund call (an authenticated
  response, like a webhook) or by a later refund event; success captures the hold into
  stripe_clearing and counts the refund on the top-up, failure releases it to available.
"""

import hashlib
import logging
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Sum
from django.utils import timezone

from accounts.principal import Principal
from core import locks
from core.errors import IdempotencyKeyReused, InsufficientFunds, ValidationFailed
from core.units import MICRO_PER_CENT, UnitError, micro_to_cents_exact, money_display
from settlement import stripe_gateway
from settlement.errors import (
    NotAProvider,
    PayoutAccountMissing,
    PayoutAccountNotReady,
    PayoutNotRetryable,
    WithdrawalExceedsRefundable,
)
from settlement.models import (
    LedgerAccount,
    LedgerTransaction,
    Payout,
    PayoutAccount,
    TopUp,
    Withdrawal,
    WithdrawalRefund,
)
from settlement.services.holds import hold_capture, hold_place, hold_release
from settlement.services.ledger import (
    Posting,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)

logger = logging.getLogger(__name__)
Kind = LedgerAccount.Kind
Refund = WithdrawalRefund.Status

# A sender's claim on a row; longer than a Stripe call with its retries (gateway timeouts).
CLAIM_LEASE = timedelta(minutes=2)
# A pending row older than this with no live claim lost its task; the periodic run sends it again.
RESEND_AFTER = timedelta(minutes=5)


def _fingerprint(*parts: object) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()


def _whole_cents(amount_micro: int, field_name: str = "amount") -> int:
    try:
        cents = micro_to_cents_exact(amount_micro)
    except UnitError as error:
        raise ValidationFailed(fields={field_name: [str(error)]}) from None
    if cents <= 0:
        raise ValidationFailed(fields={field_name: ["Must be at least 0.01."]})
    return cents


def _floor_to_cents(amount_micro: int) -> int:
    return amount_micro - amount_micro % MICRO_PER_CENT


# Connected accounts


@transaction.atomic(durable=True)
def _payout_account_record(
    *, org_id: int, payout_minimum_micro: int | None, schedule: str | None
) -> PayoutAccount:
    account, _ = PayoutAccount.objects.select_for_update().get_or_create(org_id=org_id)
    if payout_minimum_micro is not None:
        account.payout_minimum_micro = payout_minimum_micro
    if schedule is not None:
        account.schedule = schedule
    account.save(update_fields=["payout_minimum_micro", "schedule", "updated_at"])
    return account


@transaction.atomic(durable=True)
def _payout_account_record_stripe_id(*, account_id: int, stripe_account_id: str) -> None:
    # Conditional: a concurrent connect that recorded first keeps its (identical) id.
    PayoutAccount.objects.filter(pk=account_id, stripe_account_id__isnull=True).update(
        stripe_account_id=stripe_account_id,
        onboarding_status=PayoutAccount.Onboarding.PENDING,
        updated_at=timezone.now(),
    )


def payout_account_connect(
    *,
    principal: Principal,
    payout_minimum_micro: int | None = None,
    schedule: str | None = None,
    return_url: str | None = None,
    refresh_url: str | None = None,
) -> tuple[PayoutAccount, str]:
    """Set a provider's payout terms and return a Stripe Express onboarding link. Entry point.

    The first call creates the connected account (keyed by our row, so a retry after an outage
    makes no second one); every call returns a fresh single-use link. Raises NotAProvider for
    an org that sells nothing.
    """
    if not principal.org.is_provider:
        raise NotAProvider()
    if payout_minimum_micro is not None and payout_minimum_micro < 0:
        raise ValidationFailed(fields={"payout_minimum": ["Must not be negative."]})
    account = _payout_account_record(
        org_id=principal.org.id, payout_minimum_micro=payout_minimum_micro, schedule=schedule
    )
    if account.stripe_account_id is None:
        created = stripe_gateway.connected_account_create(
            email=principal.user.email,
            idempotency_key=f"payout-account:{account.id}",
            metadata={"org_id": str(principal.org.id), "payout_account_id": str(account.id)},
        )
        _payout_account_record_stripe_id(account_id=account.id, stripe_account_id=created.id)
        account.refresh_from_db()
    link = stripe_gateway.account_link_create(
        account_id=account.stripe_account_id,
        refresh_url=refresh_url or f"{settings.SITE_URL}/?payout_account=refresh",
        return_url=return_url or f"{settings.SITE_URL}/?payout_account=return",
    )
    return account, link.url


def payout_account_sync(
    *, stripe_account_id: str, is_transfers_active: bool, is_payouts_enabled: bool, state_at: int
) -> str:
    """Apply a connected account's state from Stripe (`account.updated`). Inside a txn."""
    found = PayoutAccount.objects.filter(stripe_account_id=stripe_account_id).first()
    if found is None:
        return "no payout account for this Stripe account"
    account = locks.row_for_update("settlement.PayoutAccount", found.id)
    if state_at < account.stripe_state_at:
        return "an older account snapshot; a newer one was applied"
    if is_transfers_active and is_payouts_enabled:
        status = PayoutAccount.Onboarding.ENABLED
    elif account.onboarding_status == PayoutAccount.Onboarding.ENABLED:
        status = PayoutAccount.Onboarding.RESTRICTED  # Stripe took the capability away
    else:
        status = PayoutAccount.Onboarding.PENDING
    account.onboarding_status = status
    account.stripe_state_at = state_at
    account.save(update_fields=["onboarding_status", "stripe_state_at", "updated_at"])
    return f"payout account {account.id} {status}"


# Payouts


def _ready_account(org_id: int) -> PayoutAccount:
    account = PayoutAccount.objects.filter(org_id=org_id).first()
    if account is None or account.stripe_account_id is None:
        raise PayoutAccountMissing()
    if not account.is_enabled:
        raise PayoutAccountNotReady()
    return account


def _payout_create(
    *,
    account: PayoutAccount,
    amount_micro: int | None,
    key: str,
    fingerprint: str,
    origin: str,
    user=None,
    minimum_micro: int = MICRO_PER_CENT,
) -> tuple[Payout | None, bool]:
    """Commit a pending payout with earned → payout_pending. Inside the caller's transaction.

    `amount_micro` None pays out all that is earned, in whole cents, if that reaches
    `minimum_micro` (otherwise returns (None, False)). Returns (payout, is_new); a known key
    returns the first payout. Raises InsufficientFunds when earned is short.
    """
    existing = Payout.objects.filter(org_id=account.org_id, idempotency_key=key).first()
    if existing is not None:
        if existing.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        return existing, False
    earned = org_account(org_id=account.org_id, kind=Kind.EARNED)
    pending = org_account(org_id=account.org_id, kind=Kind.PAYOUT_PENDING)
    if amount_micro is None:
        # Locked before reading, so "everything" is exact; ledger_post takes the same lock again.
        balance = locks.ledger_accounts_for_update([earned.id])[earned.id].balance_micro
        amount_micro = _floor_to_cents(balance)
        if amount_micro < max(minimum_micro, MICRO_PER_CENT):
            if origin == Payout.Origin.SCHEDULED:
                return None, False
            raise InsufficientFunds(
                f"Earned balance is {money_display(balance)}; nothing to pay out yet.",
                account_kind=Kind.EARNED,
            )
    try:
        with transaction.atomic():
            payout = Payout.objects.create(
                org_id=account.org_id,
                requested_by=user,
                stripe_account_id=account.stripe_account_id,
                amount_micro=amount_micro,
                origin=origin,
                idempotency_key=key,
                request_fingerprint=fingerprint,
            )
    except IntegrityError:  # a concurrent retry with the same key committed first
        existing = Payout.objects.get(org_id=account.org_id, idempotency_key=key)
        if existing.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused() from None
        return existing, False
    ledger_post(
        kind=LedgerTransaction.Kind.PAYOUT,
        postings=transfer(earned, pending, amount_micro),
        reference=payout.ledger_reference,
        idempotency_key=f"{payout.ledger_reference}:reserve",
        actor=user,
        reason=f"{origin} payout",
    )
    from settlement.tasks import payout_send_task  # tasks import services, not vice versa

    payout_send_task.delay_on_commit(payout.id)
    return payout, True


@transaction.atomic(durable=True)
def payout_request(
    *, principal: Principal, amount_micro: int | None = None, idempotency_key: str | None = None
) -> Payout:
    """Pay out `amount_micro` (default: all earned, in whole cents) to the org's Stripe account.

    Entry point. Commits the pending payout with earned → payout_pending and queues the send on
    commit. A retry with the same Idempotency-Key returns the first payout. Raises
    InsufficientFunds (402) when earned is short, PayoutAccountMissing / NotReady (409).
    """
    if not principal.org.is_provider:
        raise NotAProvider()
    if amount_micro is not None:
        _whole_cents(amount_micro)
    account = _ready_account(principal.org.id)
    payout, _ = _payout_create(
        account=account,
        amount_micro=amount_micro,
        key=idempotency_key or f"auto-{uuid.uuid4().hex}",
        fingerprint=_fingerprint("payout", amount_micro if amount_micro is not None else "all"),
        origin=Payout.Origin.REQUESTED,
        user=principal.user,
    )
    return payout


@transaction.atomic(durable=True)
def payout_retry(*, payout_id: int, actor) -> Payout:
    """Send a failed or reversed payout's amount again as a new payout. Entry point (admin).

    A new row, so a new Stripe idempotency key: the old key would only replay the refusal.
    Retrying the same payout twice makes one new payout (its key is `retry:<id>`).
    """
    failed = Payout.objects.get(pk=payout_id)
    if failed.status not in (Payout.Status.FAILED, Payout.Status.REVERSED):
        raise PayoutNotRetryable()
    payout, _ = _payout_create(
        account=_ready_account(failed.org_id),
        amount_micro=failed.amount_micro,
        key=f"retry:{failed.id}",
        fingerprint=_fingerprint("retry", failed.id),
        origin=Payout.Origin.RETRY,
        user=actor,
    )
    return payout


@transaction.atomic(durable=True)
def _payout_claim(payout_id: int) -> Payout | None:
    now = timezone.now()
    claimed = Payout.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        pk=payout_id,
        status=Payout.Status.PENDING,
    ).update(claimed_until=now + CLAIM_LEASE, send_attempts=F("send_attempts") + 1, updated_at=now)
    return Payout.objects.get(pk=payout_id) if claimed else None


@transaction.atomic(durable=True)
def _payout_unclaim(payout_id: int) -> None:
    Payout.objects.filter(pk=payout_id, status=Payout.Status.PENDING).update(claimed_until=None)


@transaction.atomic(durable=True)
def _payout_record_sent(*, payout_id: int, transfer_id: str) -> None:
    # Conditional: the transfer event may already have confirmed it (and recorded the same id).
    Payout.objects.filter(
        Q(stripe_transfer_id__isnull=True) | Q(stripe_transfer_id=transfer_id),
        pk=payout_id,
        status=Payout.Status.PENDING,
    ).update(
        status=Payout.Status.SENT,
        stripe_transfer_id=transfer_id,
        sent_at=timezone.now(),
        claimed_until=None,
        updated_at=timezone.now(),
    )


@transaction.atomic(durable=True)
def _payout_record_refusal(*, payout_id: int, reason: str) -> None:
    payout = locks.row_for_update("settlement.Payout", payout_id)
    if payout.status != Payout.Status.PENDING:
        return
    ledger_post(
        kind=LedgerTransaction.Kind.PAYOUT_FAILED,
        postings=transfer(
            org_account(org_id=payout.org_id, kind=Kind.PAYOUT_PENDING),
            org_account(org_id=payout.org_id, kind=Kind.EARNED),
            payout.amount_micro,
        ),
        reference=payout.ledger_reference,
        idempotency_key=f"{payout.ledger_reference}:failed",
        reason=f"Stripe refused the transfer: {reason}"[:500],
    )
    payout.status = Payout.Status.FAILED
    payout.failure_reason = reason[:500] or "Stripe refused the transfer."
    payout.failed_at = timezone.now()
    payout.claimed_until = None
    payout.save(
        update_fields=["status", "failure_reason", "failed_at", "claimed_until", "updated_at"]
    )


def payout_send(*, payout_id: int) -> Payout | None:
    """Send a pending payout as a Stripe transfer. Entry point for the task; own transactions.

    Safe to run twice: a payout that is not pending, or claimed by a live sender, is left alone,
    and the Stripe key `payout:<id>` makes a repeated call return the first transfer. A refusal
    fails the payout and returns the money to earned; an outage (PaymentProviderError) leaves
    it pending and is raised for the task to retry.
    """
    payout = _payout_claim(payout_id)
    if payout is None:
        return Payout.objects.filter(pk=payout_id).first()
    try:
        result = stripe_gateway.transfer_create(
            amount_cents=micro_to_cents_exact(payout.amount_micro),
            currency=payout.currency,
            destination=payout.stripe_account_id,
            idempotency_key=payout.stripe_idempotency_key,
            metadata={"payout_id": str(payout.id), "org_id": str(payout.org_id)},
            transfer_group=payout.ledger_reference,
        )
    except stripe_gateway.RequestRefused as refused:
        _payout_record_refusal(payout_id=payout.id, reason=refused.message)
    except Exception:
        _payout_unclaim(payout.id)  # let the retry in at once rather than after the lease
        raise
    else:
        _payout_record_sent(payout_id=payout.id, transfer_id=result.id)
    return Payout.objects.get(pk=payout_id)


def payout_transfer_apply(*, payout: Payout, transfer_id: str, reversed_micro: int) -> str:
    """Apply a Stripe transfer snapshot to its locked payout. Inside the caller's transaction.

    The transfer exists, so the money left: an in-flight payout becomes paid (payout_pending →
    stripe_clearing). `reversed_micro` is Stripe's cumulative amount reversed; only its growth
    moves money (stripe_clearing → earned), so duplicates and late snapshots change nothing.
    """
    ref = payout.ledger_reference
    outcomes = []
    payout.stripe_transfer_id = transfer_id
    if payout.is_in_flight:
        ledger_post(
            kind=LedgerTransaction.Kind.PAYOUT,
            postings=transfer(
                org_account(org_id=payout.org_id, kind=Kind.PAYOUT_PENDING),
                platform_account(kind=Kind.STRIPE_CLEARING),
                payout.amount_micro,
            ),
            reference=ref,
            idempotency_key=f"{ref}:paid",
        )
        now = timezone.now()
        payout.status = Payout.Status.PAID
        payout.sent_at = payout.sent_at or now
        payout.paid_at = now
        payout.claimed_until = None
        outcomes.append("paid")
    reversed_micro = min(reversed_micro, payout.amount_micro)
    delta_micro = reversed_micro - payout.reversed_micro
    if delta_micro > 0:
        ledger_post(
            kind=LedgerTransaction.Kind.PAYOUT_FAILED,
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=payout.org_id, kind=Kind.EARNED),
                delta_micro,
            ),
            reference=ref,
            idempotency_key=f"{ref}:reversed:{reversed_micro}",
            reason="Stripe reversed the transfer; returned to earned",
        )
        payout.reversed_micro = reversed_micro
        if reversed_micro == payout.amount_micro:
            payout.status = Payout.Status.REVERSED
            payout.failure_reason = "The transfer was reversed."
        outcomes.append(f"reversal of {delta_micro} returned to earned")
    payout.save()
    return "; ".join(outcomes) or f"payout already {payout.status}"


@dataclass
class ScheduleRun:
    created: list[int] = field(default_factory=list)
    resent_payouts: list[int] = field(default_factory=list)
    resent_withdrawals: list[int] = field(default_factory=list)


def _period_key(schedule: str, now: datetime) -> str | None:
    """The once-per-period key of a scheduled payout; its unique key makes a rerun a no-op."""
    day = now.date()
    if schedule == PayoutAccount.Schedule.DAILY:
        return f"schedule:{day.isoformat()}"
    if schedule == PayoutAccount.Schedule.WEEKLY:
        year, week, _ = day.isocalendar()
        return f"schedule:{year}-W{week:02d}"
    if schedule == PayoutAccount.Schedule.MONTHLY:
        return f"schedule:{day:%Y-%m}"
    return None


@transaction.atomic(durable=True)
def _payout_scheduled_create(*, account_id: int, key: str) -> Payout | None:
    account = PayoutAccount.objects.get(pk=account_id)
    payout, is_new = _payout_create(
        account=account,
        amount_micro=None,
        key=key,
        fingerprint=_fingerprint("schedule", key),
        origin=Payout.Origin.SCHEDULED,
        minimum_micro=account.payout_minimum_micro,
    )
    return payout if is_new else None


def payouts_schedule(*, now: datetime | None = None) -> ScheduleRun:
    """The periodic run: create due payouts above each minimum, send again what lost its task.

    Entry point; one transaction per org. A scheduled payout is made at most once per period
    (day, ISO week or month, UTC) by its key, on the first run in the period where the earned
    balance reaches the account's minimum. Safe to run twice.
    """
    from settlement.tasks import payout_send_task, withdrawal_send_task

    now = now or timezone.now()
    run = ScheduleRun()
    accounts = PayoutAccount.objects.filter(
        onboarding_status=PayoutAccount.Onboarding.ENABLED
    ).exclude(schedule=PayoutAccount.Schedule.MANUAL)
    for account in accounts.order_by("id"):
        key = _period_key(account.schedule, now)
        if (
            key is None
            or Payout.objects.filter(org_id=account.org_id, idempotency_key=key).exists()
        ):
            continue
        payout = _payout_scheduled_create(account_id=account.id, key=key)
        if payout is not None:
            run.created.append(payout.id)
    unclaimed = Q(claimed_until__isnull=True) | Q(claimed_until__lt=now)
    run.resent_payouts = list(
        Payout.objects.filter(
            unclaimed, status=Payout.Status.PENDING, created_at__lt=now - RESEND_AFTER
        )
        .order_by("id")
        .values_list("id", flat=True)[:500]
    )
    for payout_id in run.resent_payouts:
        payout_send_task.delay(payout_id)
    run.resent_withdrawals = sorted(
        set(
            WithdrawalRefund.objects.filter(
                unclaimed, status=Refund.PENDING, created_at__lt=now - RESEND_AFTER
            ).values_list("withdrawal_id", flat=True)[:500]
        )
    )
    for withdrawal_id in run.resent_withdrawals:
        withdrawal_send_task.delay(withdrawal_id)
    return run


# Withdrawals


def _refund_room(topups: list[TopUp]) -> dict[int, int]:
    """What each top-up can still refund: its amount less refunds booked and in flight."""
    in_flight = dict(
        WithdrawalRefund.objects.filter(topup__in=topups, status__in=[Refund.PENDING, Refund.SENT])
        .values("topup_id")
        .annotate(total=Sum("amount_micro"))
        .values_list("topup_id", "total")
    )
    return {
        topup.id: _floor_to_cents(
            topup.amount_micro - topup.refunded_micro - in_flight.get(topup.id, 0)
        )
        for topup in topups
    }


@transaction.atomic(durable=True)
def withdrawal_request(
    *, principal: Principal, amount_micro: int, idempotency_key: str | None = None
) -> Withdrawal:
    """Refund `amount_micro` of the org's available balance to the cards that paid it. Entry point.

    Holds the amount (available → held) and spreads it over the org's paid top-ups, newest
    first, never more than a top-up's unrefunded amount; the refunds are sent by a task queued
    on commit. Raises InsufficientFunds (402) when available is short and
    WithdrawalExceedsRefundable (409) when the card payments can't take it back.
    """
    _whole_cents(amount_micro)
    org_id = principal.org.id
    key = idempotency_key or f"auto-{uuid.uuid4().hex}"
    fingerprint = _fingerprint("withdrawal", amount_micro)
    existing = Withdrawal.objects.filter(org_id=org_id, idempotency_key=key).first()
    if existing is not None:
        if existing.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused()
        return existing
    # Top-ups first (core.locks order: top-up, withdrawal, refund, hold, ledger accounts), so
    # two withdrawals can't both count the same unrefunded room.
    topups = locks.topups_for_update(
        Q(org_id=org_id, status=TopUp.Status.SUCCEEDED, stripe_payment_intent_id__isnull=False)
    )
    try:
        with transaction.atomic():
            withdrawal = Withdrawal.objects.create(
                org_id=org_id,
                requested_by=principal.user,
                amount_micro=amount_micro,
                idempotency_key=key,
                request_fingerprint=fingerprint,
            )
    except IntegrityError:  # a concurrent retry with the same key committed first
        existing = Withdrawal.objects.get(org_id=org_id, idempotency_key=key)
        if existing.request_fingerprint != fingerprint:
            raise IdempotencyKeyReused() from None
        return existing
    hold_place(org_id=org_id, amount_micro=amount_micro, reference=withdrawal.hold_reference)
    room = _refund_room(topups)
    newest_first = sorted(
        topups, key=lambda t: (t.succeeded_at or t.created_at, t.id), reverse=True
    )
    parts, left_micro = [], amount_micro
    for topup in newest_first:
        take_micro = min(left_micro, room[topup.id])
        if take_micro > 0:
            parts.append(
                WithdrawalRefund(withdrawal=withdrawal, topup=topup, amount_micro=take_micro)
            )
            left_micro -= take_micro
        if left_micro == 0:
            break
    if left_micro:
        refundable = money_display(sum(room.values()))
        raise WithdrawalExceedsRefundable(
            f"At most {refundable} can be refunded to the cards that paid it.",
            fields={"amount": [f"At most {refundable}."]},
        )
    WithdrawalRefund.objects.bulk_create(parts)
    from settlement.tasks import withdrawal_send_task  # tasks import services, not vice versa

    withdrawal_send_task.delay_on_commit(withdrawal.id)
    return withdrawal


def refund_status_from_stripe(status: str) -> str:
    """Our refund status for Stripe's: pending and requires_action are sent, not final."""
    if status == "succeeded":
        return Refund.SUCCEEDED
    if status in {"failed", "canceled"}:
        return Refund.FAILED
    return Refund.SENT


def _withdrawal_settle(withdrawal: Withdrawal) -> None:
    """Recompute a locked withdrawal's outcome from its refunds."""
    statuses = list(withdrawal.refunds.values_list("status", "amount_micro"))
    withdrawal.refunded_micro = sum(a for s, a in statuses if s == Refund.SUCCEEDED)
    withdrawal.returned_micro = sum(a for s, a in statuses if s == Refund.FAILED)
    if any(s in (Refund.PENDING, Refund.SENT) for s, _ in statuses):
        withdrawal.status = Withdrawal.Status.PENDING
    elif withdrawal.returned_micro == 0:
        withdrawal.status = Withdrawal.Status.SUCCEEDED
    elif withdrawal.refunded_micro == 0:
        withdrawal.status = Withdrawal.Status.FAILED
    else:
        withdrawal.status = Withdrawal.Status.PARTIAL
    if withdrawal.status != Withdrawal.Status.PENDING:
        withdrawal.completed_at = withdrawal.completed_at or timezone.now()
    withdrawal.save(
        update_fields=["refunded_micro", "returned_micro", "status", "completed_at", "updated_at"]
    )


def withdrawal_refund_apply(
    *, refund_id: int, stripe_refund_id: str | None, status: str, reason: str = ""
) -> str:
    """Move a withdrawal refund to `status` and its money with it. Inside the caller's txn.

    Locks the top-up, the withdrawal, then the refund (core.locks order). Outcomes only move
    forward (WithdrawalRefund.RANK), so a duplicate or a stale answer changes nothing. Success
    captures the held amount into stripe_clearing and counts it on the top-up; failure before
    success releases it to available; failure after success takes it back from stripe_clearing.
    """
    ids = WithdrawalRefund.objects.filter(pk=refund_id).values("topup_id", "withdrawal_id").get()
    topup = locks.row_for_update("settlement.TopUp", ids["topup_id"])
    withdrawal = locks.row_for_update("settlement.Withdrawal", ids["withdrawal_id"])
    refund = locks.row_for_update("settlement.WithdrawalRefund", refund_id)
    if stripe_refund_id and refund.stripe_refund_id is None:
        refund.stripe_refund_id = stripe_refund_id
    rank = WithdrawalRefund.RANK
    if rank[status] <= rank[refund.status]:
        refund.save(update_fields=["stripe_refund_id", "updated_at"])
        return f"refund already {refund.status}"
    previous = refund.status
    reference = withdrawal.hold_reference
    clearing = platform_account(kind=Kind.STRIPE_CLEARING)
    if status == Refund.SUCCEEDED:
        hold_capture(
            reference=reference,
            postings=[Posting(clearing.id, refund.amount_micro)],
            capture_key=f"refund:{refund.id}",
            kind=LedgerTransaction.Kind.WITHDRAWAL,
        )
        topup.refunded_micro += refund.amount_micro
        topup.save(update_fields=["refunded_micro", "updated_at"])
    elif status == Refund.FAILED and previous == Refund.SUCCEEDED:
        ledger_post(
            kind=LedgerTransaction.Kind.WITHDRAWAL,
            postings=transfer(
                clearing,
                org_account(org_id=withdrawal.org_id, kind=Kind.AVAILABLE),
                refund.amount_micro,
            ),
            reference=reference,
            idempotency_key=f"{reference}:refund:{refund.id}:failed",
            reason="The card refund failed after it succeeded; returned to available",
        )
        topup.refunded_micro -= refund.amount_micro
        topup.save(update_fields=["refunded_micro", "updated_at"])
    elif status == Refund.FAILED:
        hold_release(reference=reference, amount_micro=refund.amount_micro)
    if status == Refund.FAILED:
        refund.failure_reason = (reason or "The refund failed.")[:500]
    refund.status = status
    refund.claimed_until = None
    refund.save()
    _withdrawal_settle(withdrawal)
    return f"withdrawal refund {refund.id} {previous} → {status}"


@transaction.atomic(durable=True)
def _refund_claim(refund_id: int) -> WithdrawalRefund | None:
    now = timezone.now()
    claimed = WithdrawalRefund.objects.filter(
        Q(claimed_until__isnull=True) | Q(claimed_until__lt=now),
        pk=refund_id,
        status=Refund.PENDING,
    ).update(claimed_until=now + CLAIM_LEASE, send_attempts=F("send_attempts") + 1, updated_at=now)
    if not claimed:
        return None
    return WithdrawalRefund.objects.select_related("topup").get(pk=refund_id)


@transaction.atomic(durable=True)
def _refund_unclaim(refund_id: int) -> None:
    WithdrawalRefund.objects.filter(pk=refund_id, status=Refund.PENDING).update(claimed_until=None)


@transaction.atomic(durable=True)
def _refund_record(
    *, refund_id: int, stripe_refund_id: str | None, status: str, reason: str = ""
) -> None:
    withdrawal_refund_apply(
        refund_id=refund_id, stripe_refund_id=stripe_refund_id, status=status, reason=reason
    )


def withdrawal_send(*, withdrawal_id: int) -> Withdrawal | None:
    """Send a withdrawal's pending refunds to Stripe. Entry point for the task; own transactions.

    Safe to run twice: each refund is claimed with a conditional UPDATE and sent under the key
    `withdrawal-refund:<id>`. A refusal fails that refund (its money back to available); an
    outage leaves it pending and is raised for the task to retry.
    """
    pending_ids = list(
        WithdrawalRefund.objects.filter(withdrawal_id=withdrawal_id, status=Refund.PENDING)
        .order_by("id")
        .values_list("id", flat=True)
    )
    for refund_id in pending_ids:
        refund = _refund_claim(refund_id)
        if refund is None:
            continue
        try:
            result = stripe_gateway.refund_create(
                payment_intent_id=refund.topup.stripe_payment_intent_id,
                amount_cents=micro_to_cents_exact(refund.amount_micro),
                idempotency_key=refund.stripe_idempotency_key,
                metadata={
                    "withdrawal_id": str(withdrawal_id),
                    "withdrawal_refund_id": str(refund.id),
                    "topup_id": str(refund.topup_id),
                },
            )
        except stripe_gateway.RequestRefused as refused:
            _refund_record(
                refund_id=refund.id,
                stripe_refund_id=None,
                status=Refund.FAILED,
                reason=refused.message,
            )
            continue
        except Exception:
            _refund_unclaim(refund.id)
            raise
        _refund_record(
            refund_id=refund.id,
            stripe_refund_id=result.id,
            status=refund_status_from_stripe(result.status),
            reason=result.failure_reason,
        )
    return Withdrawal.objects.filter(pk=withdrawal_id).first()


# Reads for the API. They belong with settlement.selectors; kept beside their writes for now.
