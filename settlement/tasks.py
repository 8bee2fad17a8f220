"""Celery wrappers for settlement services: take ids, call one service, safe to run twice."""

from datetime import timedelta

from celery import shared_task
from django.utils import timezone

from settlement.models import StripeEvent


@shared_task(
    bind=True,
    acks_late=True,
    max_retries=8,
    retry_backoff=True,
    retry_backoff_max=600,
    time_limit=60,
    soft_time_limit=50,
)
def stripe_event_process_task(self, stripe_event_id: int) -> str:
    from settlement.services import stripe_event_mark_failed, stripe_event_process

    try:
        event = stripe_event_process(stripe_event_id=stripe_event_id)
    except Exception as error:
        stripe_event_mark_failed(stripe_event_id=stripe_event_id, error=repr(error))
        raise self.retry(exc=error) from error
    return event.status if event else "missing"


@shared_task(acks_late=True, time_limit=60)
def stripe_events_redrive_task() -> int:
    """Queue again the events still unprocessed after a minute (a lost message, a crash)."""
    cutoff = timezone.now() - timedelta(minutes=1)
    ids = list(
        StripeEvent.objects.filter(
            status__in=[StripeEvent.Status.RECEIVED, StripeEvent.Status.FAILED],
            received_at__lt=cutoff,
            attempts__lt=20,
        ).values_list("id", flat=True)[:500]
    )
    for stripe_event_id in ids:
        stripe_event_process_task.delay(stripe_event_id)
    return len(ids)
