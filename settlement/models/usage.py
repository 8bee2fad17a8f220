import re
import uuid
from datetime import UTC, datetime

from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from core.units import TOKENS_PER_PRICE_UNIT


class UsageSource(models.TextChoices):
    PROVIDER = "provider", "Provider's report"
    BUYER = "buyer", "Buyer's report"
    RELAY = "relay", "The exchange's relay"


# The relay names each request it serves `relay_` and 32 hex digits (relay_request_id_new) and
# sends the name to the provider in `X-Request-Id`. A provider's report of a request so named is
# a check on the relay's record, never the primary one, whenever it arrives: it can't race the
# relay's settle for the primary slot, and a provider the relay fell back from, or whose answer
# the relay saw fail, can't become the meter of that request. Other sources never mint the form.
_RELAY_REQUEST_ID = re.compile(r"relay_[0-9a-f]{32}")


def relay_request_id_new() -> str:
    return f"relay_{uuid.uuid4().hex}"


def is_relay_request_id(request_id: str) -> bool:
    return _RELAY_REQUEST_ID.fullmatch(request_id) is not None


def relay_hold_reference(request_id: str) -> str:
    """The reference of the hold that pays for a relay request from the balance (Hold)."""
    return f"relay:{request_id}"


class UsageRecord(models.Model):
    """One request's token usage as one source reported it, and, for the primary meter, its cost.

    Idempotent per (source, source org, request id): providers and buyers each name their own
    requests, so two orgs may use the same id; the relay has no org and its ids are its own.
    Only a primary record (the relay's, or the provider's of a request the relay did not serve,
    told apart by the id: is_relay_request_id) draws entitlements down and is charged; the
    others are kept to reconcile against it. At most one primary record exists per (provider,
    request id), so a request the relay metered and the provider reported too is never counted
    twice.

    A primary record's billable tokens are split into those drawn from entitlements (see
    UsageDraw), those charged pay-as-you-go at `payg_price_micro`, and those the buyer's balance
    could not cover (`unfunded_*`, owed and shown to the provider, never silently lost).
    """

    Source = UsageSource

    source = models.CharField(max_length=8, choices=UsageSource.choices)
    # No foreign key in the database and no index of its own: usage_source_org_matches makes
    # it the record's provider or buyer org (or empty for the relay), whose foreign keys already
    # stand for it, and usage_unique_org_request leads with it for lookups. A key checked per
    # row at commit cost a tenth of a batch's database time for nothing more.
    source_org = models.ForeignKey(
        "accounts.Org",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_constraint=False,
        db_index=False,
    )
    request_id = models.CharField(max_length=128)
    batch_id = models.UUIDField(help_text="The ingestion call that wrote this record.")
    # These three references, and a draw's entitlement, are checked by triggers once per
    # statement rather than by foreign keys once per row (migration 0015 says why and how):
    # hence db_constraint=False.
    market = models.ForeignKey(
        "marketplace.Market",
        on_delete=models.PROTECT,
        related_name="usage_records",
        db_constraint=False,
    )
    # Looked up through usage_pair_time and usage_provider_recent, which lead with them.
    buyer_org = models.ForeignKey(
        "accounts.Org",
        on_delete=models.PROTECT,
        related_name="usage_bought",
        db_index=False,
        db_constraint=False,
    )
    provider_org = models.ForeignKey(
        "accounts.Org",
        on_delete=models.PROTECT,
        related_name="usage_served",
        db_index=False,
        db_constraint=False,
    )
    model = models.CharField(max_length=120)
    input_tokens = models.BigIntegerField()
    cached_input_tokens = models.BigIntegerField()
    output_tokens = models.BigIntegerField()
    billable_tokens = models.BigIntegerField(help_text="By the market's weights, rounded down.")
    output_weight_bp = models.PositiveIntegerField(help_text="The market's weight when received.")
    cache_weight_bp = models.PositiveIntegerField(help_text="The market's weight when received.")
    is_estimated = models.BooleanField(default=False, help_text="Counted from the text.")
    is_primary = models.BooleanField(help_text="This record draws down and is charged.")
    started_at = models.DateTimeField()
    ended_at = models.DateTimeField()
    received_at = models.DateTimeField(default=timezone.now)
    metered_at = models.DateTimeField(
        null=True, blank=True, help_text="When the primary record was drawn down and charged."
    )
    # The metering outcome; zero on records that only check the primary one.
    entitlement_tokens = models.BigIntegerField(default=0, help_text="Covered by entitlements.")
    payg_tokens = models.BigIntegerField(default=0, help_text="Charged pay-as-you-go.")
    payg_price_micro = models.BigIntegerField(default=0, help_text="Per 1M billable tokens.")
    payg_cost_micro = models.BigIntegerField(default=0, help_text="Taken from available.")
    payg_fee_micro = models.BigIntegerField(default=0, help_text="Of the cost, to the platform.")
    unfunded_tokens = models.BigIntegerField(default=0)
    unfunded_micro = models.BigIntegerField(default=0, help_text="Owed, not covered by balance.")

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["source_org", "source", "request_id"],
                condition=Q(source_org__isnull=False),
                name="usage_unique_org_request",
            ),
            models.UniqueConstraint(
                fields=["request_id"],
                condition=Q(source="relay"),
                name="usage_unique_relay_request",
            ),
            models.UniqueConstraint(
                fields=["provider_org", "request_id"],
                condition=Q(is_primary=True),
                name="usage_one_primary_per_request",
            ),
            models.CheckConstraint(
                condition=Q(source__in=UsageSource.values), name="usage_source_valid"
            ),
            models.CheckConstraint(
                condition=Q(source="relay", source_org__isnull=True)
                | Q(source="provider", source_org=F("provider_org"))
                | Q(source="buyer", source_org=F("buyer_org")),
                name="usage_source_org_matches",
            ),
            models.CheckConstraint(
                condition=Q(is_primary=False) | ~Q(source="buyer"),
                name="usage_buyer_never_primary",
            ),
            models.CheckConstraint(
                condition=Q(input_tokens__gte=0)
                & Q(cached_input_tokens__gte=0)
                & Q(output_tokens__gte=0)
                & Q(billable_tokens__gte=0),
                name="usage_tokens_not_negative",
            ),
            models.CheckConstraint(
                condition=Q(ended_at__gte=F("started_at")), name="usage_ends_after_start"
            ),
            models.CheckConstraint(
                condition=Q(entitlement_tokens__gte=0)
                & Q(payg_tokens__gte=0)
                & Q(unfunded_tokens__gte=0)
                & Q(payg_price_micro__gte=0)
                & Q(payg_cost_micro__gte=0)
                & Q(payg_fee_micro__gte=0)
                & Q(payg_fee_micro__lte=F("payg_cost_micro"))
                & Q(unfunded_micro__gte=0),
                name="usage_outcome_not_negative",
            ),
            # A metered record accounts for every billable token; any other record for none.
            models.CheckConstraint(
                condition=Q(
                    is_primary=True,
                    metered_at__isnull=False,
                    billable_tokens=F("entitlement_tokens")
                    + F("payg_tokens")
                    + F("unfunded_tokens"),
                )
                | Q(
                    metered_at__isnull=True,
                    entitlement_tokens=0,
                    payg_tokens=0,
                    payg_cost_micro=0,
                    unfunded_tokens=0,
                    unfunded_micro=0,
                ),
                name="usage_outcome_adds_up",
            ),
        ]
        indexes = [
            models.Index(
                fields=["buyer_org", "provider_org", "market", "ended_at"], name="usage_pair_time"
            ),
            models.Index(fields=["provider_org", "-id"], name="usage_provider_recent"),
            # ledger_check sums what ingestion charged pay-as-you-go; only those records are
            # in here, so records drawn from entitlements and the relay's add no entry.
            models.Index(
                fields=["payg_cost_micro"],
                condition=Q(payg_cost_micro__gt=0) & ~Q(source="relay"),
                name="usage_payg_charged",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.source} usage {self.request_id}: {self.billable_tokens} billable"

    @property
    def ended_hour(self) -> datetime:
        """Start of the hour (UTC) the request ended in: the hour reconciliation judges it in."""
        return self.ended_at.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


class UsageDraw(models.Model):
    """Tokens one primary usage record drew from one entitlement.

    `tokens` count in the entitlement's own weights (what its tokens_used grew by);
    `covered_tokens` are the record's billable tokens (the market's weights) that draw paid for.
    The two differ only when the market's weights changed after the entitlement was traded.
    `hour` is the record's `ended_hour`, copied when the draw is written: settlement pays draws
    by (entitlement, hour), and with the hour here it sums them without joining every draw to
    its record.
    """

    # Looked up through usage_draw_unique, which leads with it.
    usage_record = models.ForeignKey(
        UsageRecord, on_delete=models.PROTECT, related_name="draws", db_index=False
    )
    # No index of its own: nothing looks draws up by entitlement alone but ledger_check, which
    # reads every draw anyway, and entitlements are never deleted. usage_draw_hour, which
    # serves the settlement run's reads by hour, takes its place: still one index entry a draw.
    entitlement = models.ForeignKey(
        "settlement.Entitlement",
        on_delete=models.PROTECT,
        related_name="usage_draws",
        db_index=False,
        db_constraint=False,
    )
    tokens = models.BigIntegerField()
    covered_tokens = models.BigIntegerField()
    hour = models.DateTimeField(help_text="Start of the hour (UTC) the record ended in.")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["usage_record", "entitlement"], name="usage_draw_unique"
            ),
            models.CheckConstraint(
                condition=Q(tokens__gte=0) & Q(covered_tokens__gt=0),
                name="usage_draw_positive",
            ),
        ]
        indexes = [models.Index(fields=["hour", "entitlement"], name="usage_draw_hour")]

    def __str__(self) -> str:
        return f"{self.tokens} tokens of entitlement {self.entitlement_id}"


class PaygMeter(models.Model):
    """Pay-as-you-go usage of one buyer with one provider in one market, for cumulative rounding.

    Each record's cost is floor((remainder + tokens x price) / 10^6) and the new remainder is
    what that division left, so the cost of many small usages always equals the cost of one big
    one, even as the reference price moves. `charged_micro + unfunded_micro` is therefore
    floor(sum of tokens x price / 10^6) over the pair's pay-as-you-go history.
    """

    buyer_org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="+")
    provider_org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="+")
    market = models.ForeignKey("marketplace.Market", on_delete=models.PROTECT, related_name="+")
    tokens = models.BigIntegerField(default=0, help_text="Pay-as-you-go tokens, funded or not.")
    remainder = models.BigIntegerField(
        default=0, help_text="Of sum(tokens x price), what the last division by 10^6 left."
    )
    charged_micro = models.BigIntegerField(default=0)
    unfunded_tokens = models.BigIntegerField(default=0)
    unfunded_micro = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["buyer_org", "provider_org", "market"], name="payg_meter_unique_pair"
            ),
            models.CheckConstraint(
                condition=Q(remainder__gte=0) & Q(remainder__lt=TOKENS_PER_PRICE_UNIT),
                name="payg_meter_remainder_in_range",
            ),
            models.CheckConstraint(
                condition=Q(tokens__gte=0)
                & Q(charged_micro__gte=0)
                & Q(unfunded_tokens__gte=0)
                & Q(unfunded_tokens__lte=F("tokens"))
                & Q(unfunded_micro__gte=0),
                name="payg_meter_not_negative",
            ),
        ]

    def __str__(self) -> str:
        return f"pay-as-you-go {self.buyer_org_id}->{self.provider_org_id} in {self.market_id}"
