from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.db.models.functions import Mod
from django.db.models.lookups import Exact
from django.utils import timezone

from core.units import MICRO_PER_CENT
from settlement.models.ledger import CURRENCY_USD
from settlement.models.payments import TopUp


def _whole_cents(field: str, name: str) -> models.CheckConstraint:
    # Stripe moves whole cents, so a payout or a refund is always a whole number of them.
    return models.CheckConstraint(condition=Exact(Mod(F(field), MICRO_PER_CENT), 0), name=name)


class PayoutAccount(models.Model):
    class Onboarding(models.TextChoices):
        CREATED = "created", "Created (Stripe not called yet)"
        PENDING = "pending", "Onboarding not finished"
        ENABLED = "enabled", "Enabled for payouts"
        RESTRICTED = "restricted", "Restricted by Stripe"

    class Schedule(models.TextChoices):
        MANUAL = "manual", "Only on request"
        DAILY = "daily", "Daily"
        WEEKLY = "weekly", "Weekly (Mondays, UTC)"
        MONTHLY = "monthly", "Monthly (the 1st, UTC)"

    org = models.OneToOneField(
        "accounts.Org", on_delete=models.PROTECT, related_name="payout_account"
    )
    stripe_account_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    onboarding_status = models.CharField(
        max_length=12, choices=Onboarding.choices, default=Onboarding.CREATED
    )
    payout_minimum_micro = models.BigIntegerField(default=0)
    schedule = models.CharField(max_length=8, choices=Schedule.choices, default=Schedule.MANUAL)
    # Stripe's time of the account snapshot applied last, so an older `account.updated` that
    # arrives late never undoes a newer one.
    stripe_state_at = models.BigIntegerField(default=0, help_text="epoch s")
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(payout_minimum_micro__gte=0), name="payout_account_minimum_not_negative"
            ),
            models.CheckConstraint(
                condition=Q(onboarding_status="created") | Q(stripe_account_id__isnull=False),
                name="payout_account_has_stripe_id_once_called",
            ),
        ]

    def __str__(self) -> str:
        return f"payout account of org {self.org_id} ({self.onboarding_status})"

    @property
    def is_enabled(self) -> bool:
        return self.onboarding_status == self.Onboarding.ENABLED


class Payout(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Pending (transfer not confirmed sent)"
        SENT = "sent", "Transfer created, awaiting Stripe's event"
        PAID = "paid", "Paid to the provider's Stripe account"
        FAILED = "failed", "Failed; returned to earned"
        REVERSED = "reversed", "Paid, then reversed in full; returned to earned"

    class Origin(models.TextChoices):
        REQUESTED = "requested", "Requested"
        SCHEDULED = "scheduled", "Scheduled"
        RETRY = "retry", "Retry of a failed payout"

    IN_FLIGHT = (Status.PENDING, Status.SENT)

    org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="payouts")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    # Copied at request time: a payout in flight goes where it was sent, whatever changes later.
    stripe_account_id = models.CharField(max_length=255)
    amount_micro = models.BigIntegerField()
    currency = models.CharField(max_length=3, default=CURRENCY_USD)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    origin = models.CharField(max_length=10, choices=Origin.choices, default=Origin.REQUESTED)
    idempotency_key = models.CharField(max_length=128)
    request_fingerprint = models.CharField(max_length=64)
    stripe_transfer_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    reversed_micro = models.BigIntegerField(default=0)
    failure_reason = models.CharField(max_length=500, blank=True)
    send_attempts = models.PositiveIntegerField(default=0)
    # A sender's claim lasts until then; a crashed sender's claim simply runs out.
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    sent_at = models.DateTimeField(null=True, blank=True)
    paid_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "idempotency_key"], name="payout_unique_idempotency_key"
            ),
            models.CheckConstraint(condition=Q(amount_micro__gt=0), name="payout_amount_positive"),
            _whole_cents("amount_micro", "payout_amount_whole_cents"),
            models.CheckConstraint(
                condition=Q(reversed_micro__gte=0) & Q(reversed_micro__lte=F("amount_micro")),
                name="payout_reversal_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["pending", "failed"]) | Q(stripe_transfer_id__isnull=False),
                name="payout_sent_has_transfer_id",
            ),
            models.CheckConstraint(
                condition=~Q(status="failed") | ~Q(failure_reason=""),
                name="payout_failure_has_reason",
            ),
            models.CheckConstraint(
                condition=~Q(status="reversed") | Q(reversed_micro=F("amount_micro")),
                name="payout_reversed_in_full",
            ),
        ]
        indexes = [
            models.Index(fields=["org", "-created_at"], name="payout_org_recent"),
            models.Index(fields=["status", "created_at"], name="payout_status_age"),
        ]

    def __str__(self) -> str:
        return f"payout #{self.pk} {self.status}"

    @property
    def is_in_flight(self) -> bool:
        return self.status in self.IN_FLIGHT

    @property
    def ledger_reference(self) -> str:
        return f"payout:{self.pk}"

    @property
    def stripe_idempotency_key(self) -> str:
        return f"payout:{self.pk}"


class Withdrawal(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending", "Refunds in progress"
        SUCCEEDED = "succeeded", "Refunded in full"
        PARTIAL = "partial", "Partly refunded; the rest returned to available"
        FAILED = "failed", "Not refunded; returned to available"

    org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="withdrawals")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    amount_micro = models.BigIntegerField()
    currency = models.CharField(max_length=3, default=CURRENCY_USD)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    idempotency_key = models.CharField(max_length=128)
    request_fingerprint = models.CharField(max_length=64)
    refunded_micro = models.BigIntegerField(default=0)
    returned_micro = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    completed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "idempotency_key"], name="withdrawal_unique_idempotency_key"
            ),
            models.CheckConstraint(
                condition=Q(amount_micro__gt=0), name="withdrawal_amount_positive"
            ),
            _whole_cents("amount_micro", "withdrawal_amount_whole_cents"),
            models.CheckConstraint(
                condition=Q(refunded_micro__gte=0, returned_micro__gte=0)
                & Q(amount_micro__gte=F("refunded_micro") + F("returned_micro")),
                name="withdrawal_outcome_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status="pending")
                | Q(amount_micro=F("refunded_micro") + F("returned_micro")),
                name="withdrawal_final_only_when_settled",
            ),
        ]
        indexes = [models.Index(fields=["org", "-created_at"], name="withdrawal_org_recent")]

    def __str__(self) -> str:
        return f"withdrawal #{self.pk} {self.status}"

    @property
    def hold_reference(self) -> str:
        return f"withdrawal:{self.pk}"


class WithdrawalRefund(models.Model):
    """One Stripe refund of a withdrawal, against one top-up's charge."""

    class Status(models.TextChoices):
        PENDING = "pending", "Pending (Stripe's answer not recorded yet)"
        SENT = "sent", "Refund created, not succeeded yet"
        SUCCEEDED = "succeeded", "Refunded"
        FAILED = "failed", "Failed; returned to available"

    # Outcomes only move forward: pending → sent → succeeded → failed (a refund can fail after
    # it succeeded, never the other way round), so a stale event never undoes a later one.
    RANK = {Status.PENDING: 0, Status.SENT: 1, Status.SUCCEEDED: 2, Status.FAILED: 3}

    withdrawal = models.ForeignKey(Withdrawal, on_delete=models.PROTECT, related_name="refunds")
    topup = models.ForeignKey(TopUp, on_delete=models.PROTECT, related_name="withdrawal_refunds")
    amount_micro = models.BigIntegerField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.PENDING)
    stripe_refund_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    failure_reason = models.CharField(max_length=500, blank=True)
    send_attempts = models.PositiveIntegerField(default=0)
    claimed_until = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(amount_micro__gt=0), name="withdrawal_refund_amount_positive"
            ),
            _whole_cents("amount_micro", "withdrawal_refund_whole_cents"),
            models.UniqueConstraint(
                fields=["withdrawal", "topup"], name="withdrawal_refund_one_per_topup"
            ),
            models.CheckConstraint(
                condition=~Q(status__in=["sent", "succeeded"]) | Q(stripe_refund_id__isnull=False),
                name="withdrawal_refund_sent_has_refund_id",
            ),
        ]
        indexes = [models.Index(fields=["status", "created_at"], name="withdrawal_refund_status")]

    def __str__(self) -> str:
        return f"refund #{self.pk} of withdrawal {self.withdrawal_id} ({self.status})"

    @property
    def stripe_idempotency_key(self) -> str:
        return f"withdrawal-refund:{self.pk}"
