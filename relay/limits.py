"""Per-key limits over calendar UTC windows, shared by every relay process through the database.

A counter row per (key, kind, window start) is created when first needed and taken with one
conditional UPDATE (`value + n <= limit`): the row lock the UPDATE takes makes concurrent takers
queue, and PostgreSQL re-checks the condition on the row each finds, so no process can pass the
limit. Giving back (a request cost less than its worst case) lowers the same window's row.
"""

from datetime import datetime, timedelta

from django.db.models import F

from relay.models import KeyCounter, SpendWindow


def minute_start(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


def seconds_to_next_minute(moment: datetime) -> int:
    return max(1, 60 - moment.second)


def spend_window_start(window: str, moment: datetime) -> datetime:
    """Start of the calendar window holding `moment` (UTC): the day, the Monday, or the 1st."""
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if window == SpendWindow.DAY:
        return day
    if window == SpendWindow.WEEK:
        return day - timedelta(days=day.weekday())
    return day.replace(day=1)


def counter_take(*, api_key_id: int, kind: str, window_start: datetime, amount: int, limit: int):
    """Add `amount` to the window's counter if it stays within `limit`; False when it would not."""
    if amount > limit:
        return False
    KeyCounter.objects.bulk_create(
        [KeyCounter(api_key_id=api_key_id, kind=kind, window_start=window_start)],
        ignore_conflicts=True,
    )
    taken = KeyCounter.objects.filter(
        api_key_id=api_key_id, kind=kind, window_start=window_start, value__lte=limit - amount
    ).update(value=F("value") + amount)
    return taken == 1


def counter_give_back(*, api_key_id: int, kind: str, window_start: datetime, amount: int) -> None:
    """Lower a window's counter by what a request took but did not use."""
    if amount <= 0:
        return
    KeyCounter.objects.filter(
        api_key_id=api_key_id, kind=kind, window_start=window_start, value__gte=amount
    ).update(value=F("value") - amount)
