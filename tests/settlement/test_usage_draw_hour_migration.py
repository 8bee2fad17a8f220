"""Migration 0013 gives the draws written before it their records' hour."""

import importlib
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from django.apps import apps
from django.db import connection
from django.utils import timezone

from settlement.models import UsageDraw
from settlement.services import usage_ingest
from tests.settlement import usage_setup
from tests.settlement.usage_setup import usage

_fresh_books, market, seller, buy = (
    usage_setup._fresh_books,
    usage_setup.market,
    usage_setup.seller,
    usage_setup.buy,
)

_MIGRATION = importlib.import_module("settlement.migrations.0013_usage_draw_hour")


def test_the_migration_gives_existing_draws_their_records_hour(seller, buyer, market, buy):
    now = timezone.now()
    buy(created_at=now - timedelta(hours=3))
    ends = [now - timedelta(hours=2), now - timedelta(hours=1), now]
    usage_ingest(
        principal=seller,
        records=[
            usage(market, buyer.org, started_at=end - timedelta(seconds=2), ended_at=end)
            for end in ends
        ],
    )
    # As the draws were before the migration gave them an hour: none right.
    UsageDraw.objects.update(hour=datetime(2000, 1, 1, tzinfo=UTC))

    # The migration's backfill itself, on today's schema (it reads only the two tables and
    # its schema editor's connection).
    _MIGRATION.draw_hours_backfill(apps, SimpleNamespace(connection=connection))

    hours = sorted(UsageDraw.objects.values_list("hour", flat=True))
    assert hours == [end.replace(minute=0, second=0, microsecond=0) for end in ends]
