"""Celery wrappers for the marketplace: the per-market match task and how it is routed.

Each market's match task goes to one of `MATCH_QUEUE_SHARDS` queues, `match-<market_id % shards>`,
so that more workers, each consuming some of those queues, take more markets. A worker must
consume the match queues (`celery worker -Q celery,match-0,…`) or placed orders stay pending.
"""

import logging
from datetime import timedelta

from celery import shared_task
from celery.contrib.django.task import DjangoTask
from django.conf import settings
from django.utils import timezone

from marketplace.models import Market, Order

logger = logging.getLogger(__name__)

# Retry delays after a failed run: 2 s, 4 s, 8 s … capped at a minute. Orders stay pending in the
# database meanwhile, so nothing is lost; the next order placed in the market queues a run too.
RETRY_BASE_S = 2
RETRY_MAX_S = 60


def match_queue_for(market_id: int) -> str:
    """The Celery queue that carries `market_id`'s match task."""
    return f"match-{market_id % settings.MATCH_QUEUE_SHARDS}"


class MarketMatchTask(DjangoTask):
    """Routes every call (`delay`, `delay_on_commit`, retries) to the market's shard queue."""

    def apply_async(self, args=None, kwargs=None, **options):
        if "queue" not in options:
            market_id = (kwargs or {}).get("market_id", args[0] if args else None)
            if market_id is not None:
                options["queue"] = match_queue_for(int(market_id))
        return super().apply_async(args, kwargs, **options)


@shared_task(
    base=MarketMatchTask,
    bind=True,
    acks_late=True,
    max_retries=5,
    time_limit=120,
    soft_time_limit=100,
)
def market_match_task(self, market_id: int):
    """Match the market's pending orders and settle the trades. Safe to run twice."""
    from marketplace.engine import market_match

    try:
        return market_match(market_id=market_id)
    except Exception as error:
        logger.warning("match run for market %s failed: %r", market_id, error)
        countdown = min(RETRY_MAX_S, RETRY_BASE_S * 2**self.request.retries)
        raise self.retry(exc=error, countdown=countdown) from error


# A pending order older than this has lost its match task (a worker killed before it acked, or
# retries used up): the sweep queues its market again.
STALE_PENDING_AFTER_S = 30


@shared_task(acks_late=True, time_limit=60, soft_time_limit=50)
def markets_match_sweep_task() -> list[int]:
    """Queue a match for every open market with orders pending too long. Safe to run twice."""
    cutoff = timezone.now() - timedelta(seconds=STALE_PENDING_AFTER_S)
    market_ids = sorted(
        Order.objects.filter(
            status=Order.Status.PENDING,
            created_at__lt=cutoff,
            market__status=Market.Status.OPEN,
        )
        .values_list("market_id", flat=True)
        .distinct()
    )
    for market_id in market_ids:
        market_match_task.delay(market_id)
    if market_ids:
        logger.info("queued a match for markets with stale pending orders: %s", market_ids)
    return market_ids
