from django.db import models
from django.db.models import F, Q
from django.utils import timezone


class Entitlement(models.Model):
    """Tokens a buyer bought from one provider in one trade, and how much of them is used.

    The contract terms (price, weights, provider fee, expiry and its policy) are copied from the
    trade when it settles, so a later change to the market never changes a contract already
    traded. `value_micro` went into the buyer's escrow; `charged_micro` is the part already moved
    on to the provider for delivered tokens (cumulative rounding: charged = floor(used x price)).
    Escrow invariant: the buyer's escrow = sum of (value - charged) over its open entitlements.
    """

    class Status(models.TextChoices):
        OPEN = "open", "Open"
        EXHAUSTED = "exhausted", "Used up"
        EXPIRED = "expired", "Expired"

    class ExpiryPolicy(models.TextChoices):
        REFUND = "refund", "Refund unused tokens to the buyer"
        FORFEIT = "forfeit", "Unused tokens are paid to the provider"

    trade = models.OneToOneField(
        "marketplace.Trade", on_delete=models.PROTECT, related_name="entitlement"
    )
    # No foreign-key constraints in the database for these three: a batch of trades names one
    # market and a few orgs, checked once per statement by triggers that keep the same rule
    # (core.references; migration 0016). The trade is new in the same transaction, one per row,
    # and stays a foreign key.
    buyer_org = models.ForeignKey(
        "accounts.Org",
        on_delete=models.PROTECT,
        related_name="entitlements_bought",
        db_constraint=False,
    )
    provider_org = models.ForeignKey(
        "accounts.Org",
        on_delete=models.PROTECT,
        related_name="entitlements_sold",
        db_constraint=False,
    )
    market = models.ForeignKey(
        "marketplace.Market",
        on_delete=models.PROTECT,
        related_name="entitlements",
        db_constraint=False,
    )
    tokens_bought = models.BigIntegerField(help_text="Billable tokens.")
    tokens_used = models.BigIntegerField(default=0)
    price_micro = models.BigIntegerField(help_text="Micro-USD per 1M billable tokens.")
    value_micro = models.BigIntegerField(help_text="Paid into escrow at the trade.")
    charged_micro = models.BigIntegerField(default=0, help_text="Moved on to the provider so far.")
    output_weight_bp = models.PositiveIntegerField()
    cache_weight_bp = models.PositiveIntegerField()
    provider_fee_bp = models.PositiveIntegerField()
    expiry_policy = models.CharField(max_length=8, choices=ExpiryPolicy.choices)
    expires_at = models.DateTimeField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    created_at = models.DateTimeField(default=timezone.now)
    closed_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(tokens_bought__gt=0)
                & Q(tokens_used__gte=0)
                & Q(tokens_used__lte=F("tokens_bought")),
                name="entitlement_tokens_within_bought",
            ),
            models.CheckConstraint(
                condition=Q(value_micro__gte=0)
                & Q(charged_micro__gte=0)
                & Q(charged_micro__lte=F("value_micro")),
                name="entitlement_charged_within_value",
            ),
        ]
        indexes = [
            # Draw-down order: a buyer's open entitlements with a provider, earliest expiry first.
            models.Index(
                fields=["buyer_org", "provider_org", "market", "status", "expires_at", "id"],
                name="entitlement_drawdown",
            ),
            models.Index(fields=["provider_org", "market", "status"], name="entitlement_provider"),
        ]

    def __str__(self) -> str:
        return f"entitlement #{self.pk}: {self.tokens_used}/{self.tokens_bought} tokens"

    @property
    def tokens_left(self) -> int:
        return self.tokens_bought - self.tokens_used

    @property
    def escrow_left_micro(self) -> int:
        return self.value_micro - self.charged_micro
