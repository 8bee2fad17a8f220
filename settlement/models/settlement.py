from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from settlement.models.ledger import CURRENCY_USD, LedgerAccount


class SettlementRun(models.Model):
    """One settlement of one period, [period_start, period_end), idempotent per period.

    The run row is written in the same database transaction as the money it moves, so a run
    that crashed left nothing behind and a run that committed is `succeeded` (or `failed`, when
    ledger_check found a breach: then its payments were rolled back and only the row and its
    problems were kept). A re-run of a succeeded period does nothing; of a failed one, redoes it.
    """

    class Status(models.TextChoices):
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed; nothing was paid"

    period_start = models.DateTimeField()
    period_end = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RUNNING)
    started_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    attempts = models.PositiveIntegerField(default=0)
    pair_hours_settled = models.PositiveIntegerField(default=0)
    pair_hours_held = models.PositiveIntegerField(default=0)
    pair_hours_pending = models.PositiveIntegerField(
        default=0, help_text="Still inside the reports' grace period; a later run settles them."
    )
    tokens_settled = models.BigIntegerField(default=0)
    tokens_waived = models.BigIntegerField(default=0, help_text="Not paid, by a resolution.")
    delivered_micro = models.BigIntegerField(default=0, help_text="Escrow paid for delivery.")
    fees_micro = models.BigIntegerField(default=0, help_text="Of delivered and forfeited.")
    forfeited_micro = models.BigIntegerField(default=0, help_text="Unused escrow paid on.")
    refunded_micro = models.BigIntegerField(default=0, help_text="Escrow back to buyers.")
    rounding_micro = models.BigIntegerField(default=0)
    entitlements_exhausted = models.PositiveIntegerField(default=0)
    entitlements_expired = models.PositiveIntegerField(default=0)
    problems = models.TextField(blank=True, help_text="What ledger_check found, on a failure.")
    started_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        permissions = [("run_settlement", "Can start settlement runs")]
        constraints = [
            models.UniqueConstraint(
                fields=["period_start", "period_end"], name="settlement_run_unique_period"
            ),
            models.CheckConstraint(
                condition=Q(period_end__gt=F("period_start")),
                name="settlement_run_period_not_empty",
            ),
            models.CheckConstraint(
                condition=Q(status__in=["running", "succeeded", "failed"]),
                name="settlement_run_status_valid",
            ),
            models.CheckConstraint(
                condition=Q(
                    tokens_settled__gte=0,
                    tokens_waived__gte=0,
                    delivered_micro__gte=0,
                    fees_micro__gte=0,
                    forfeited_micro__gte=0,
                    refunded_micro__gte=0,
                    rounding_micro__gte=0,
                ),
                name="settlement_run_totals_not_negative",
            ),
            models.CheckConstraint(
                condition=~Q(status="failed") | ~Q(problems=""),
                name="settlement_run_failure_has_problems",
            ),
        ]
        indexes = [models.Index(fields=["-period_start"], name="settlement_run_recent")]

    def __str__(self) -> str:
        return (
            f"settlement {self.period_start:%Y-%m-%d %H:%M}-{self.period_end:%H:%M} {self.status}"
        )


class SettledUsage(models.Model):
    """Tokens one run paid (or waived) of one entitlement's draws in one hour.

    The draws of an (entitlement, hour) not yet covered by these rows are what is still to pay,
    so usage that arrives late for an hour already settled is paid by the next run, once.
    """

    run = models.ForeignKey(SettlementRun, on_delete=models.PROTECT, related_name="settled")
    entitlement = models.ForeignKey(
        "settlement.Entitlement", on_delete=models.PROTECT, related_name="settled_usage"
    )
    hour = models.DateTimeField()
    tokens_paid = models.BigIntegerField()
    tokens_waived = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "entitlement", "hour"], name="settled_usage_unique"
            ),
            models.CheckConstraint(
                condition=Q(tokens_paid__gte=0)
                & Q(tokens_waived__gte=0)
                & (Q(tokens_paid__gt=0) | Q(tokens_waived__gt=0)),
                name="settled_usage_positive",
            ),
        ]
        indexes = [models.Index(fields=["entitlement", "hour"], name="settled_usage_hour")]

    def __str__(self) -> str:
        return f"{self.tokens_paid} tokens of entitlement {self.entitlement_id} at {self.hour}"


class Discrepancy(models.Model):
    """A pair's hour whose reports disagree past the market's tolerance, or one never came.

    It holds that hour's draws out of settlement until staff resolve it: accept the primary
    meter, accept the other report, or state a figure, always with a reason (and an audit row).
    The resolved figure is what the hour is paid on from then on.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open (the hour is held)"
        RESOLVED = "resolved", "Resolved"

    class Resolution(models.TextChoices):
        ACCEPT_PRIMARY = "accept_primary", "Accept the primary meter"
        ACCEPT_OTHER = "accept_other", "Accept the other report"
        STATED = "stated", "A stated figure"

    class Source(models.TextChoices):
        PROVIDER = "provider", "Provider's report"
        BUYER = "buyer", "Buyer's report"

    buyer_org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="+")
    provider_org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="+")
    market = models.ForeignKey(
        "marketplace.Market", on_delete=models.PROTECT, related_name="discrepancies"
    )
    hour = models.DateTimeField(help_text="Start of the hour (UTC).")
    primary_tokens = models.BigIntegerField(help_text="Billable tokens by the primary meter.")
    other_tokens = models.BigIntegerField(help_text="Billable tokens by the other report.")
    source = models.CharField(max_length=8, choices=Source.choices)
    is_missing = models.BooleanField(default=False, help_text="The other report never came.")
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    resolution = models.CharField(max_length=16, choices=Resolution.choices, blank=True)
    resolved_tokens = models.BigIntegerField(null=True, blank=True)
    reason = models.TextField(blank=True)
    resolved_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    resolved_at = models.DateTimeField(null=True, blank=True)
    settled_run = models.ForeignKey(
        SettlementRun,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="discrepancies_settled",
        help_text="The run that paid the hour after the resolution.",
    )
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "discrepancies"
        constraints = [
            models.UniqueConstraint(
                fields=["buyer_org", "provider_org", "market", "hour"],
                name="discrepancy_unique_pair_hour",
            ),
            models.CheckConstraint(
                condition=Q(primary_tokens__gte=0) & Q(other_tokens__gte=0),
                name="discrepancy_tokens_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(
                    status="open",
                    resolution="",
                    resolved_tokens__isnull=True,
                    resolved_by__isnull=True,
                    settled_run__isnull=True,
                )
                | (
                    Q(
                        status="resolved",
                        resolution__in=["accept_primary", "accept_other", "stated"],
                        resolved_tokens__gte=0,
                        resolved_by__isnull=False,
                        resolved_at__isnull=False,
                    )
                    & ~Q(reason="")
                ),
                name="discrepancy_resolution_complete",
            ),
        ]
        indexes = [
            models.Index(fields=["buyer_org", "-hour"], name="discrepancy_buyer_recent"),
            models.Index(fields=["provider_org", "-hour"], name="discrepancy_provider_recent"),
            models.Index(fields=["status", "hour"], name="discrepancy_status_hour"),
        ]

    def __str__(self) -> str:
        return f"discrepancy #{self.pk} {self.hour:%Y-%m-%d %H:00} ({self.status})"

    @property
    def is_open(self) -> bool:
        return self.status == self.Status.OPEN

    @property
    def difference_tokens(self) -> int:
        return self.other_tokens - self.primary_tokens


class StatementLine(models.Model):
    """One org account over one run's period: opening + credits - debits = closing.

    Computed from the ledger entries created in the period; `movements` splits the net change
    by ledger transaction kind (micro-USD, signed), and sums to credits - debits.
    """

    run = models.ForeignKey(SettlementRun, on_delete=models.PROTECT, related_name="statement")
    org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="+")
    account_kind = models.CharField(max_length=20, choices=LedgerAccount.Kind.choices)
    currency = models.CharField(max_length=3, default=CURRENCY_USD)
    opening_micro = models.BigIntegerField()
    credits_micro = models.BigIntegerField()
    debits_micro = models.BigIntegerField()
    closing_micro = models.BigIntegerField()
    movements = models.JSONField(default=dict, help_text="Net micro-USD by transaction kind.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["run", "org", "account_kind", "currency"],
                name="statement_line_unique",
            ),
            models.CheckConstraint(
                condition=Q(credits_micro__gte=0) & Q(debits_micro__gte=0),
                name="statement_line_sides_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(
                    closing_micro=F("opening_micro") + F("credits_micro") - F("debits_micro")
                ),
                name="statement_line_adds_up",
            ),
        ]
        indexes = [models.Index(fields=["org", "run"], name="statement_line_org_run")]

    def __str__(self) -> str:
        return f"statement of org {self.org_id} {self.account_kind} in run {self.run_id}"


class SettlementAudit(models.Model):
    """What a staff member did to settlement (resolve a discrepancy, start a run), and why."""

    class Action(models.TextChoices):
        DISCREPANCY_RESOLVED = "discrepancy_resolved", "Discrepancy resolved"
        RUN_STARTED = "run_started", "Settlement run started"

    actor = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    action = models.CharField(max_length=24, choices=Action.choices)
    discrepancy = models.ForeignKey(
        Discrepancy, null=True, blank=True, on_delete=models.PROTECT, related_name="audit"
    )
    run = models.ForeignKey(
        SettlementRun, null=True, blank=True, on_delete=models.PROTECT, related_name="audit"
    )
    reason = models.TextField(blank=True)
    details = models.JSONField(default=dict)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["-created_at"], name="settlement_audit_recent")]

    def __str__(self) -> str:
        return f"{self.action} by {self.actor_id} at {self.created_at:%Y-%m-%d %H:%M}"
