"""Celery wrappers for the marketplace: the per-market match task and how it is routed.

Each market's match task goes to one of `MATCH_QUEUE_SHARDS` queues, `match-<market_id % shards>`,
so that more workers, each consuming some of those queues, take more markets. A worker must
consume the match queues (`celery worker -Q celery,match-0,…`) or placed orders stay pending.
"""

import atexit
import logging
import os
import threading
import time
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


class MatchPublisher:
    """Publishes the match task of markets whose orders committed, one publish for a burst.

    Placing an order used to publish one match task per order, which was about an eighth of
    an order's CPU in the web process, and queued work the engine does not need: a run drains
    every pending order of its market, so one task published after the last commit covers
    every order committed before it. `market_match_soon` (after commit) marks the market;
    one background thread per process takes the marked markets and publishes one task each.
    A market marked while its publish is in flight is published once more afterwards, so an
    order committed at any moment is followed by a publish that starts after its commit.

    Rounds start at most every `interval_s`: a publish costs the web process about half a
    millisecond of CPU, as much as the rest of a fast-path order, and without a pause each
    order arriving between two publishes would get its own. The pause is what a pending order
    may wait for its match beyond that.

    A publish that fails (the broker away) is retried with backoff; orders wait pending in the
    database meanwhile, and if the process dies first, `markets_match_sweep_task` queues their
    market once they are older than STALE_PENDING_AFTER_S.
    """

    def __init__(self, publish, *, interval_s: float = 0.0):
        self._publish = publish
        self.interval_s = interval_s
        self._changed = threading.Condition()
        self._wanted: set[int] = set()
        self._publishing = False
        self._thread: threading.Thread | None = None
        self._pid = 0

    def request(self, market_id: int) -> None:
        """Publish a match of `market_id` soon; call it once the order has committed."""
        with self._changed:
            self._wanted.add(market_id)
            self._start_if_needed()
            self._changed.notify_all()

    def flush(self, timeout_s: float) -> bool:
        """Wait until everything requested so far is published; False if `timeout_s` passed."""
        with self._changed:
            return self._changed.wait_for(
                lambda: not self._wanted and not self._publishing, timeout=timeout_s
            )

    def _start_if_needed(self) -> None:
        # A forked worker (gunicorn) inherits the object but not the thread.
        if self._thread is not None and self._pid == os.getpid() and self._thread.is_alive():
            return
        self._pid = os.getpid()
        self._thread = threading.Thread(target=self._run, name="match-publisher", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        failures = 0
        while True:
            with self._changed:
                self._changed.wait_for(lambda: self._wanted)
                market_ids, self._wanted = sorted(self._wanted), set()
                self._publishing = True
            failed = self._publish_each(market_ids)
            with self._changed:
                self._wanted.update(failed)
                self._publishing = False
                self._changed.notify_all()
            failures = failures + 1 if failed else 0
            pause_s = self.interval_s
            if failed:
                pause_s = max(pause_s, min(RETRY_MAX_S, RETRY_BASE_S * 2 ** (failures - 1)))
            if pause_s:
                time.sleep(pause_s)

    def _publish_each(self, market_ids: list[int]) -> list[int]:
        failed = []
        for market_id in market_ids:
            try:
                self._publish(market_id)
            except Exception as error:
                logger.warning("publishing the match of market %s failed: %r", market_id, error)
                failed.append(market_id)
        return failed


# A pending order waits at most this much longer for its match run to be published.
MATCH_PUBLISH_INTERVAL_S = 0.05

_publisher = MatchPublisher(
    lambda market_id: market_match_task.delay(market_id), interval_s=MATCH_PUBLISH_INTERVAL_S
)


def market_match_soon(market_id: int) -> None:
    """Queue a match run of the market, coalesced with others (MatchPublisher). After commit."""
    _publisher.request(market_id)


def market_match_flush(timeout_s: float = 5.0) -> bool:
    """Wait for the coalesced publishes requested so far; False if `timeout_s` passed."""
    return _publisher.flush(timeout_s)


# A worker stopping gracefully publishes what it still has; a crash leaves it to the sweep.
atexit.register(market_match_flush, 2.0)
