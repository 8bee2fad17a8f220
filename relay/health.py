"""Provider health as the relay sees it: a rolling window of its own observations per endpoint.

Each relay process counts what it sees in memory and writes it to `HealthBucket` rows (one per
endpoint and minute) in small batches, so every relay process judges from the same figures. The
window is the last HEALTH_WINDOW minutes. An endpoint is judged only after MIN_REQUESTS requests
in the window; until then it routes normally.

Classes: NORMAL (success >= 95 %), DEGRADED (80-95 %: tried only after the normal ones) and
LAST_RESORT (< 80 %: tried only when nothing else is left).
"""

import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.db.models import F, Sum
from django.utils import timezone

from relay.models import HealthBucket

HEALTH_WINDOW = timedelta(minutes=30)
MIN_REQUESTS = 100
NORMAL_SUCCESS_BP = 9_500
DEGRADED_SUCCESS_BP = 8_000
# Routes are read from the database at most every relay.selectors.ROUTE_TTL_S (2 s), so
# writing the counts more often than that shows nobody anything sooner. A flush is ORM work on
# a worker thread (an update or insert per endpoint and minute); flushing every 50 observations
# took about 5% of the relay's CPU at a few hundred requests a second, in a profile. The
# observation bound only caps what a crash can forget.
FLUSH_EVERY_OBSERVATIONS = 2_000
FLUSH_EVERY_S = 2.0

NORMAL, DEGRADED, LAST_RESORT = 0, 1, 2
CLASS_NAMES = {NORMAL: "normal", DEGRADED: "degraded", LAST_RESORT: "last resort"}


@dataclass
class Health:
    requests: int = 0
    successes: int = 0
    ttft_ms_total: int = 0
    ttft_samples: int = 0
    output_tokens: int = 0
    generation_ms_total: int = 0

    @property
    def success_bp(self) -> int | None:
        return None if not self.requests else self.successes * 10_000 // self.requests

    @property
    def ttft_ms(self) -> int | None:
        return None if not self.ttft_samples else self.ttft_ms_total // self.ttft_samples

    @property
    def tokens_per_s(self) -> int | None:
        if not self.generation_ms_total:
            return None
        return self.output_tokens * 1000 // self.generation_ms_total

    @property
    def health_class(self) -> int:
        if self.requests < MIN_REQUESTS:
            return NORMAL
        if self.success_bp >= NORMAL_SUCCESS_BP:
            return NORMAL
        if self.success_bp >= DEGRADED_SUCCESS_BP:
            return DEGRADED
        return LAST_RESORT


@dataclass
class _Pending:
    buckets: dict = field(default_factory=dict)
    observations: int = 0
    since: float = field(default_factory=time.monotonic)


_lock = threading.Lock()
_pending = _Pending()


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def health_observe(
    *,
    endpoint_id: int,
    is_success: bool,
    ttft_ms: int | None = None,
    output_tokens: int = 0,
    generation_ms: int = 0,
) -> bool:
    """Count one attempt in memory; True when a flush is due. Cheap: no database access."""
    key = (endpoint_id, _minute(timezone.now()))
    with _lock:
        bucket = _pending.buckets.setdefault(key, Health())
        bucket.requests += 1
        bucket.successes += int(is_success)
        if ttft_ms is not None:
            bucket.ttft_ms_total += ttft_ms
            bucket.ttft_samples += 1
        bucket.output_tokens += output_tokens
        bucket.generation_ms_total += generation_ms
        _pending.observations += 1
        return (
            _pending.observations >= FLUSH_EVERY_OBSERVATIONS
            or time.monotonic() - _pending.since >= FLUSH_EVERY_S
        )


def health_flush() -> int:
    """Add what this process observed to the shared buckets; returns the buckets written.

    Runs in its own short transactions: an increment per bucket, created first if missing, so
    concurrent relay processes add up and never overwrite each other.
    """
    global _pending
    with _lock:
        taken, _pending = _pending, _Pending()
    for (endpoint_id, minute), seen in taken.buckets.items():
        HealthBucket.objects.bulk_create(
            [HealthBucket(endpoint_id=endpoint_id, minute=minute)], ignore_conflicts=True
        )
        HealthBucket.objects.filter(endpoint_id=endpoint_id, minute=minute).update(
            requests=F("requests") + seen.requests,
            successes=F("successes") + seen.successes,
            ttft_ms_total=F("ttft_ms_total") + seen.ttft_ms_total,
            ttft_samples=F("ttft_samples") + seen.ttft_samples,
            output_tokens=F("output_tokens") + seen.output_tokens,
            generation_ms_total=F("generation_ms_total") + seen.generation_ms_total,
        )
    return len(taken.buckets)


def health_for(endpoint_ids) -> dict[int, Health]:
    """Each endpoint's figures over the window (an empty Health when the relay saw nothing)."""
    rows = (
        HealthBucket.objects.filter(
            endpoint_id__in=list(endpoint_ids), minute__gte=_minute(timezone.now() - HEALTH_WINDOW)
        )
        .values("endpoint_id")
        .annotate(
            requests_sum=Sum("requests"),
            successes_sum=Sum("successes"),
            ttft_sum=Sum("ttft_ms_total"),
            ttft_n=Sum("ttft_samples"),
            output_sum=Sum("output_tokens"),
            generation_sum=Sum("generation_ms_total"),
        )
    )
    found = {
        row["endpoint_id"]: Health(
            requests=row["requests_sum"],
            successes=row["successes_sum"],
            ttft_ms_total=row["ttft_sum"],
            ttft_samples=row["ttft_n"],
            output_tokens=row["output_sum"],
            generation_ms_total=row["generation_sum"],
        )
        for row in rows
    }
    return {endpoint_id: found.get(endpoint_id, Health()) for endpoint_id in endpoint_ids}
