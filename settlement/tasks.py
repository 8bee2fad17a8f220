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


# Payouts and withdrawals. Each send claims its row with a conditional UPDATE and calls Stripe
# with a key built from the row id, so a second run (a redelivery after a lost ack, a retry)
# sends nothing twice. Only an outage is retried here; Stripe's refusals are recorded by the
# service. After the last retry the row stays pending and the periodic run sends it again.


@shared_task(bind=True, acks_late=True, max_retries=6, time_limit=90, soft_time_limit=75)
def payout_send_task(self, payout_id: int) -> str:
    from settlement.errors import PaymentProviderError
    from settlement.services.payouts import payout_send

    try:
        payout = payout_send(payout_id=payout_id)
    except PaymentProviderError as error:
        countdown = min(RETRY_MAX_S, RETRY_BASE_S * 2**self.request.retries)
        raise self.retry(exc=error, countdown=countdown) from error
    return payout.status if payout else "missing"


@shared_task(bind=True, acks_late=True, max_retries=6, time_limit=180, soft_time_limit=150)
def withdrawal_send_task(self, withdrawal_id: int) -> str:
    from settlement.errors import PaymentProviderError
    from settlement.services.payouts import withdrawal_send

    try:
        withdrawal = withdrawal_send(withdrawal_id=withdrawal_id)
    except PaymentProviderError as error:
        countdown = min(RETRY_MAX_S, RETRY_BASE_S * 2**self.request.retries)
        raise self.retry(exc=error, countdown=countdown) from error
    return withdrawal.status if withdrawal else "missing"


@shared_task(acks_late=True, time_limit=300, soft_time_limit=270)
def payouts_schedule_task() -> dict:
    """Create the payouts that are due and send again those that lost their task."""
    from settlement.services.payouts import payouts_schedule

    run = payouts_schedule()
    return {
        "created": len(run.created),
        "resent_payouts": len(run.resent_payouts),
        "resent_withdrawals": len(run.resent_withdrawals),
    }


@shared_task(
    bind=True,
    acks_late=True,
    max_retries=3,
    time_limit=1800,
    soft_time_limit=1740,
)
def settlement_run_task(self, period_start: str | None = None) -> str:
    """Settle one hour (ISO start, UTC); by default the hour before the current one.

    Safe to run twice: the run is idempotent per period. A ledger_check breach is not retried
    (the run is recorded failed and the error is raised for the monitors); other errors are
    retried with backoff, and the next hourly run carries the unsettled hours in any case.
    """
    from datetime import UTC, datetime, timedelta

    from settlement.errors import SettlementRunFailed
    from settlement.services.settlement_runs import settlement_run

    if period_start is None:
        start = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=1)
    else:
        start = datetime.fromisoformat(period_start).astimezone(UTC)
    try:
        run = settlement_run(period_start=start, period_end=start + timedelta(hours=1))
    except SettlementRunFailed:
        raise
    except Exception as error:
        countdown = min(RETRY_MAX_S, RETRY_BASE_S * 2**self.request.retries)
        raise self.retry(exc=error, countdown=countdown) from error
    return run.status
