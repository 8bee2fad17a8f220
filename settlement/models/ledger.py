from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

CURRENCY_USD = "USD"


class LedgerAccount(models.Model):
    class Kind(models.TextChoices):
        AVAILABLE = "available", "Available"
        HELD = "held", "Held (bid collateral)"
        ESCROW = "escrow", "Escrow (bought, not yet delivered)"
        EARNED = "earned", "Earned (not yet paid out)"
        PAYOUT_PENDING = "payout_pending", "Payout pending"
        FEES = "fees", "Platform fees"
        STRIPE_CLEARING = "stripe_clearing", "Stripe clearing"
        ADJUSTMENTS = "adjustments", "Adjustments"
        ROUNDING = "rounding", "Rounding remainders"

    ORG_KINDS = frozenset(
        {Kind.AVAILABLE, Kind.HELD, Kind.ESCROW, Kind.EARNED, Kind.PAYOUT_PENDING}
    )
    PLATFORM_KINDS = frozenset({Kind.FEES, Kind.STRIPE_CLEARING, Kind.ADJUSTMENTS, Kind.ROUNDING})
    # The mirror of money outside the ledger: clearing goes negative as cards pay in (what Stripe
    # owes us), adjustments as the platform gives money. Every other account never goes below zero.
    SIGNED_KINDS = frozenset({Kind.STRIPE_CLEARING, Kind.ADJUSTMENTS})

    org = models.ForeignKey(
        "accounts.Org",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="ledger_accounts",
    )
    kind = models.CharField(max_length=20, choices=Kind.choices)
    currency = models.CharField(max_length=3, default=CURRENCY_USD)
    balance_micro = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "kind", "currency"],
                condition=Q(org__isnull=False),
                name="ledger_account_unique_org_kind",
            ),
            models.UniqueConstraint(
                fields=["kind", "currency"],
                condition=Q(org__isnull=True),
                name="ledger_account_unique_platform_kind",
            ),
            models.CheckConstraint(
                condition=(
                    Q(
                        org__isnull=False,
                        kind__in=["available", "held", "escrow", "earned", "payout_pending"],
                    )
                    | Q(
                        org__isnull=True,
                        kind__in=["fees", "stripe_clearing", "adjustments", "rounding"],
                    )
                ),
                name="ledger_account_kind_matches_owner",
            ),
            models.CheckConstraint(
                condition=Q(balance_micro__gte=0) | Q(kind__in=["stripe_clearing", "adjustments"]),
                name="ledger_account_balance_not_negative",
            ),
        ]

    def __str__(self) -> str:
        owner = self.org.name if self.org_id else "platform"
        return f"{owner}:{self.kind}"

    @property
    def may_go_negative(self) -> bool:
        return self.kind in self.SIGNED_KINDS


class LedgerTransaction(models.Model):
    class Kind(models.TextChoices):
        TOPUP = "topup", "Card top-up"
        TOPUP_REFUND = "topup_refund", "Card refund"
        HOLD = "hold", "Hold placed"
        HOLD_RELEASE = "hold_release", "Hold released"
        HOLD_CAPTURE = "hold_capture", "Hold captured"
        ADJUSTMENT = "adjustment", "Manual adjustment"
        TRANSFER = "transfer", "Transfer"
        TRADE = "trade", "Trade settled into escrow"
        DELIVERY = "delivery", "Delivered tokens paid to the provider"
        PAYG = "payg", "Pay-as-you-go usage"
        EXPIRY = "expiry", "Unused entitlement expired"
        ROUNDING = "rounding", "Rounding remainder"
        PAYOUT = "payout", "Payout to the provider's bank"
        PAYOUT_FAILED = "payout_failed", "Payout failed and returned"
        WITHDRAWAL = "withdrawal", "Withdrawal refunded to card"

    kind = models.CharField(max_length=24, choices=Kind.choices)
    reference = models.CharField(max_length=120)
    # `reference` and the key are indexed through Meta, not `db_index`/`unique=True`: on
    # PostgreSQL those add a second index each for LIKE queries no hot path makes, and every
    # posting pays for each index it writes. A key of NULL (not "") is "no key": NULLs never
    # collide in a unique index.
    idempotency_key = models.CharField(max_length=160, null=True, blank=True)  # noqa: DJ001
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,  # ledger_txn_actor indexes only the few rows a person made
    )
    reason = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        # Granted to the operators who may correct balances in the admin (ledger_adjust).
        permissions = [("make_adjustment", "Can make balanced ledger adjustments")]
        constraints = [
            models.UniqueConstraint(fields=["idempotency_key"], name="ledger_txn_unique_key")
        ]
        indexes = [
            models.Index(fields=["reference"], name="ledger_txn_reference"),
            models.Index(
                fields=["actor"], condition=Q(actor__isnull=False), name="ledger_txn_actor"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.pk} {self.kind} {self.reference}"


class LedgerEntry(models.Model):
    # Both references are checked once per statement by triggers, not by foreign-key constraints
    # (core.references; migration 0016): a batch of postings names a few accounts a thousand
    # times. Transactions are append-only, so their check takes no lock.
    transaction = models.ForeignKey(
        LedgerTransaction, on_delete=models.PROTECT, related_name="entries", db_constraint=False
    )
    # No index of its own: ledger_entry_account_recent (account, -id) serves every lookup by
    # account, and each index costs every posting an insert.
    account = models.ForeignKey(
        LedgerAccount,
        on_delete=models.PROTECT,
        related_name="entries",
        db_index=False,
        db_constraint=False,
    )
    amount_micro = models.BigIntegerField()
    balance_after_micro = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        verbose_name_plural = "ledger entries"
        constraints = [
            models.CheckConstraint(condition=~Q(amount_micro=0), name="ledger_entry_not_zero"),
        ]
        indexes = [models.Index(fields=["account", "-id"], name="ledger_entry_account_recent")]

    def __str__(self) -> str:
        return f"{self.account} {self.amount_micro:+d}"


class Hold(models.Model):
    class Status(models.TextChoices):
        OPEN = "open", "Open"
        CLOSED = "closed", "Closed"

    org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="holds")
    reference = models.CharField(max_length=120, unique=True)
    amount_micro = models.BigIntegerField()
    captured_micro = models.BigIntegerField(default=0)
    released_micro = models.BigIntegerField(default=0)
    status = models.CharField(max_length=8, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(amount_micro__gt=0), name="hold_amount_positive"),
            models.CheckConstraint(
                condition=Q(captured_micro__gte=0, released_micro__gte=0)
                & Q(amount_micro__gte=F("captured_micro") + F("released_micro")),
                name="hold_parts_within_amount",
            ),
            models.CheckConstraint(
                condition=Q(status="open")
                | Q(amount_micro=F("captured_micro") + F("released_micro")),
                name="hold_closed_only_when_spent",
            ),
        ]
        indexes = [models.Index(fields=["org", "status"], name="hold_org_status")]

    def __str__(self) -> str:
        return f"hold {self.reference} ({self.remaining_micro} left)"

    @property
    def remaining_micro(self) -> int:
        return self.amount_micro - self.captured_micro - self.released_micro
