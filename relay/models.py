"""The relay's own state: key limits and their counters, reservations, health, and its request log.

- `KeyPolicy`: the relay's limits for one API key (accounts.ApiKey stays as it is): a default
  region, a spend cap over a calendar UTC window (day, week from Monday, month from the 1st), and
  requests and tokens per minute. No policy row means no limits beyond the balance.
- `KeyCounter`: what a key used in one window of one kind. Unique per (key, kind, window start);
  taken with a conditional UPDATE (`value + n <= limit`), so every relay process shares the limit
  and none can pass it. `value >= 0`.
- `EntitlementReservation`: tokens of an entitlement promised to one request in flight (unique by
  request). Made under the entitlement's row lock against what it has left less the other
  reservations, so concurrent requests never promise the same tokens twice; deleted when the
  request settles, or by the stale sweep if its relay process died first.
- `HealthBucket`: the relay's observations of one endpoint in one minute (requests, successes,
  time to first token, output tokens and generation time). The health window sums recent buckets.
- `EndpointHealth`: provider endpoints as the relay's health window sees them (admin only).
- `RelayRequest`: one row per request the relay dispatched: who, where, tokens by class, cost, the
  timings and how it ended. Unique by `request_id`.
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone

from marketplace.models import ProviderEndpoint


class SpendWindow(models.TextChoices):
    DAY = "day", "Calendar day (UTC)"
    WEEK = "week", "Week from Monday (UTC)"
    MONTH = "month", "Month from the 1st (UTC)"


class KeyPolicy(models.Model):
    api_key = models.OneToOneField(
        "accounts.ApiKey", on_delete=models.CASCADE, related_name="relay_policy"
    )
    default_region = models.ForeignKey(
        "marketplace.Region", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    spend_cap_micro = models.BigIntegerField(null=True, blank=True)
    spend_window = models.CharField(
        max_length=5, choices=SpendWindow.choices, default=SpendWindow.MONTH
    )
    requests_per_minute = models.PositiveIntegerField(null=True, blank=True)
    tokens_per_minute = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        verbose_name_plural = "key policies"
        constraints = [
            models.CheckConstraint(
                condition=Q(spend_cap_micro__isnull=True) | Q(spend_cap_micro__gte=0),
                name="relay_policy_cap_not_negative",
            )
        ]

    def __str__(self) -> str:
        return f"relay policy of {self.api_key}"


class KeyCounter(models.Model):
    class Kind(models.TextChoices):
        REQUESTS = "requests", "Requests per minute"
        TOKENS = "tokens", "Tokens per minute"
        SPEND = "spend", "Spend in the cap's window"

    api_key = models.ForeignKey("accounts.ApiKey", on_delete=models.CASCADE, related_name="+")
    kind = models.CharField(max_length=8, choices=Kind.choices)
    window_start = models.DateTimeField()
    value = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["api_key", "kind", "window_start"], name="relay_counter_unique_window"
            ),
            models.CheckConstraint(condition=Q(value__gte=0), name="relay_counter_not_negative"),
        ]

    def __str__(self) -> str:
        return f"{self.kind} of key {self.api_key_id} from {self.window_start}: {self.value}"


class EntitlementReservation(models.Model):
    entitlement = models.ForeignKey(
        "settlement.Entitlement", on_delete=models.CASCADE, related_name="relay_reservations"
    )
    request_id = models.CharField(max_length=64, unique=True)
    tokens = models.BigIntegerField()
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(condition=Q(tokens__gt=0), name="relay_reservation_positive")
        ]
        indexes = [models.Index(fields=["created_at"], name="relay_reservation_age")]

    def __str__(self) -> str:
        return f"{self.tokens} tokens of entitlement {self.entitlement_id} for {self.request_id}"


class HealthBucket(models.Model):
    endpoint = models.ForeignKey(
        "marketplace.ProviderEndpoint", on_delete=models.CASCADE, related_name="health_buckets"
    )
    minute = models.DateTimeField()
    requests = models.PositiveIntegerField(default=0)
    successes = models.PositiveIntegerField(default=0)
    ttft_ms_total = models.BigIntegerField(default=0)
    ttft_samples = models.PositiveIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    generation_ms_total = models.BigIntegerField(default=0)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["endpoint", "minute"], name="relay_health_unique"),
            models.CheckConstraint(
                condition=Q(successes__lte=models.F("requests")), name="relay_health_successes"
            ),
        ]

    def __str__(self) -> str:
        return f"endpoint {self.endpoint_id} at {self.minute}: {self.successes}/{self.requests}"


class RelayRequest(models.Model):
    class Kind(models.TextChoices):
        CHAT = "chat", "Chat completion"
        COMPLETION = "completion", "Completion"
        EMBEDDING = "embedding", "Embedding"

    class Status(models.TextChoices):
        OK = "ok", "Served and charged"
        EMPTY = "empty", "Empty completion, not charged"
        FAILED = "failed", "Failed, not charged"

    request_id = models.CharField(max_length=64, unique=True)
    api_key = models.ForeignKey(
        "accounts.ApiKey", null=True, on_delete=models.SET_NULL, related_name="+"
    )
    buyer_org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="+")
    market = models.ForeignKey("marketplace.Market", on_delete=models.PROTECT, related_name="+")
    endpoint = models.ForeignKey(
        "marketplace.ProviderEndpoint", null=True, on_delete=models.PROTECT, related_name="+"
    )
    provider_org = models.ForeignKey(
        "accounts.Org", null=True, on_delete=models.PROTECT, related_name="+"
    )
    entitlement = models.ForeignKey(
        "settlement.Entitlement", null=True, on_delete=models.PROTECT, related_name="+"
    )
    model = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=Kind.choices)
    status = models.CharField(max_length=6, choices=Status.choices)
    is_streamed = models.BooleanField(default=False)
    is_estimated = models.BooleanField(default=False, help_text="Tokens counted from the text.")
    input_tokens = models.BigIntegerField(default=0)
    cached_input_tokens = models.BigIntegerField(default=0)
    output_tokens = models.BigIntegerField(default=0)
    billable_tokens = models.BigIntegerField(default=0)
    price_micro = models.BigIntegerField(default=0, help_text="Per 1M billable tokens.")
    held_micro = models.BigIntegerField(default=0, help_text="The worst case set aside.")
    cost_micro = models.BigIntegerField(default=0)
    attempts = models.PositiveSmallIntegerField(default=1)
    ttft_ms = models.PositiveIntegerField(null=True, blank=True)
    duration_ms = models.PositiveIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        indexes = [models.Index(fields=["buyer_org", "-created_at"], name="relay_request_buyer")]
        constraints = [
            models.CheckConstraint(
                condition=Q(cost_micro__gte=0) & Q(cost_micro__lte=models.F("held_micro"))
                | Q(held_micro=0),
                name="relay_request_cost_within_hold",
            )
        ]

    def __str__(self) -> str:
        return f"{self.request_id} ({self.status})"


class EndpointHealth(ProviderEndpoint):
    """Provider endpoints seen through the relay's health window, for the admin (no table)."""

    class Meta:
        proxy = True
        verbose_name_plural = "endpoint health"
