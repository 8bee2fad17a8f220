"""Helpers for the settlement run tests: report usage through ingestion, settle an hour.

The primary meter here is the provider's report (the relay did not serve these requests), so a
provider's `report` draws the buyer's entitlements down; a buyer's `report` only checks it.
"""

from datetime import datetime, timedelta

from settlement.models import SettlementRun
from settlement.services import settlement_run, usage_ingest
from tests.settlement.usage_setup import usage

HOUR = timedelta(hours=1)


def hour_of(moment: datetime) -> datetime:
    return moment.replace(minute=0, second=0, microsecond=0)


def report(principal, counterparty, market, *, tokens: int, at: datetime, request_id=None):
    """`principal`'s org reports one request of `tokens` billable tokens that ended `at`."""
    fields = {"request_id": request_id} if request_id else {}
    (result,) = usage_ingest(
        principal=principal,
        records=[
            usage(
                market,
                counterparty,
                input_tokens=tokens,
                output_tokens=0,
                started_at=at - timedelta(seconds=1),
                ended_at=at,
                **fields,
            )
        ],
    )
    assert result.status == "accepted", (result.code, result.message)
    return result.record


def settle(moment: datetime, *, now: datetime | None = None, actor=None) -> SettlementRun:
    """Run the settlement of the hour `moment` falls in; by default once its grace has passed."""
    start = hour_of(moment)
    return settlement_run(
        period_start=start,
        period_end=start + HOUR,
        actor=actor,
        now=now or start + 2 * HOUR + timedelta(minutes=5),
    )
