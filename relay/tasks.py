"""Celery wrappers for the relay."""

from celery import shared_task


@shared_task(acks_late=True, time_limit=300, soft_time_limit=240)
def relay_stale_release_task() -> int:
    """Release holds and reservations that a dead relay process left behind. Safe to run twice."""
    from relay.services import relay_stale_release

    return relay_stale_release()
