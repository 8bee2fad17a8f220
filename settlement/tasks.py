"""Celery wrappers for settlement services: take ids, call one service, safe to run twice."""

import logging

from celery import shared_task

logger = logging.getLogger(__name__)

# Retry delays for a failed event: 10 s, 20 s, 40 s … capped at 10 minutes. After the last retry
# the periodic redrive keeps trying (settlement.services.stripe_events.REDRIVE_MAX_ATTEMPTS).
RETRY_BASE_S = 10
RETRY_MAX_S = 600


@shared_task(bind=True, acks_late=True, max_retries=8, time_limit=60, soft_time_limit=50)
def stripe_event_process_task(self, stripe_event_id: int) -> str:
    from settlement.services.stripe_events import stripe_event_mark_failed, stripe_event_process

    try:
        event = stripe_event_process(stripe_event_id=stripe_event_id)
    except Exception as error:
        try:
            stripe_event_mark_failed(stripe_event_id=stripe_event_id, error=repr(error))
        except Exception:
            # The database itself may be what failed; the event stays as it was and the
            # redrive picks it up, so the retry below must still be scheduled.
            logger.exception("could not record the failure of stripe event %s", stripe_event_id)
        countdown = min(RETRY_MAX_S, RETRY_BASE_S * 2**self.request.retries)
        raise self.retry(exc=error, countdown=countdown) from error
    return event.status if event else "missing"


@shared_task(acks_late=True, time_limit=60, soft_time_limit=50)
def stripe_events_redrive_task() -> int:
    """Queue again the Stripe events still unprocessed after a minute (a lost message, a crash)."""
    from settlement.services.stripe_events import stripe_events_redrive

    return len(stripe_events_redrive())
