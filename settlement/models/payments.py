from django.conf import settings
from django.db import models
from django.db.models import F, Q
from django.utils import timezone

from settlement.models.ledger import CURRENCY_USD


class StripeEvent(models.Model):
    class Status(models.TextChoices):
        RECEIVED = "received", "Received"
        PROCESSED = "processed", "Processed"
        IGNORED = "ignored", "Ignored (not a type we act on)"
        FAILED = "failed", "Failed (will retry)"

    stripe_id = models.CharField(max_length=255, unique=True)
    type = models.CharField(max_length=100, db_index=True)
    livemode = models.BooleanField(default=False)
    stripe_created = models.BigIntegerField(
        help_text="Stripe's own timestamp of the event, epoch s"
    )
    payload = models.JSONField()
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.RECEIVED)
    attempts = models.PositiveIntegerField(default=0)
    last_error = models.TextField(blank=True)
    received_at = models.DateTimeField(default=timezone.now)
    processed_at = models.DateTimeField(null=True, blank=True)

    def __str__(self) -> str:
        return f"{self.type} {self.stripe_id}"


class TopUp(models.Model):
    class Status(models.TextChoices):
        CREATED = "created", "Created (Stripe not called yet)"
        PENDING = "pending", "Awaiting payment"
        SUCCEEDED = "succeeded", "Paid and credited"
        FAILED = "failed", "Payment failed"
        CANCELED = "canceled", "Canceled"

    class Method(models.TextChoices):
        PAYMENT_INTENT = "payment_intent", "PaymentIntent"
        CHECKOUT = "checkout", "Checkout Session"

    org = models.ForeignKey("accounts.Org", on_delete=models.PROTECT, related_name="topups")
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    amount_micro = models.BigIntegerField()
    currency = models.CharField(max_length=3, default=CURRENCY_USD)
    method = models.CharField(max_length=16, choices=Method.choices)
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.CREATED)
    idempotency_key = models.CharField(max_length=128)
    request_fingerprint = models.CharField(max_length=64)
    stripe_payment_intent_id = models.CharField(max_length=255, null=True, blank=True, unique=True)
    stripe_checkout_session_id = models.CharField(
        max_length=255, null=True, blank=True, unique=True
    )
    client_secret = models.CharField(max_length=255, blank=True)
    checkout_url = models.URLField(max_length=2000, blank=True)
    failure_message = models.CharField(max_length=500, blank=True)
    refunded_micro = models.BigIntegerField(default=0)
    created_at = models.DateTimeField(default=timezone.now)
    updated_at = models.DateTimeField(auto_now=True)
    succeeded_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(
                fields=["org", "idempotency_key"], name="topup_unique_idempotency_key"
            ),
            models.CheckConstraint(condition=Q(amount_micro__gt=0), name="topup_amount_positive"),
            models.CheckConstraint(
                condition=Q(refunded_micro__gte=0) & Q(refunded_micro__lte=F("amount_micro")),
                name="topup_refund_within_amount",
            ),
        ]
        indexes = [models.Index(fields=["org", "-created_at"], name="topup_org_recent")]

    def __str__(self) -> str:
        return f"top-up #{self.pk} {self.status}"

    @property
    def is_final(self) -> bool:
        return self.status in {self.Status.SUCCEEDED, self.Status.FAILED, self.Status.CANCELED}

    @property
    def ledger_reference(self) -> str:
        return f"topup:{self.pk}"
