"""The Celery application. Tasks live in each app's tasks.py; periodic tasks are declared below."""

import os

from celery import Celery
from celery.schedules import crontab

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("token_exchange")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

# Every periodic task, with its schedule in words. Issues that add one add it here.
app.conf.beat_schedule = {
    "stripe-events-redrive": {
        # Every five minutes: queue again any Stripe event still unprocessed after a minute.
        "task": "settlement.tasks.stripe_events_redrive_task",
        "schedule": 300.0,
    },
    "relay-stale-release": {
        # Every ten minutes: give back relay holds and reservations older than an hour.
        "task": "relay.tasks.relay_stale_release_task",
        "schedule": 600.0,
    },
    "markets-match-sweep": {
        # Every minute: queue a match for markets whose orders have waited over 30 seconds
        # (their task was lost with a killed worker, or ran out of retries).
        "task": "marketplace.tasks.markets_match_sweep_task",
        "schedule": 60.0,
    },
    "payouts-schedule": {
        # Every hour: make the scheduled payouts that are due (once a day, ISO week or month,
        # UTC, as each provider chose, once earned reaches its minimum), and send again any
        # payout or withdrawal refund left pending for five minutes without a live sender.
        "task": "settlement.tasks.payouts_schedule_task",
        "schedule": 3600.0,
    },
    "settlement-run": {
        # Every hour at five past, settle the hour before (hours still inside their reports'
        # grace period are carried to the next run).
        "task": "settlement.tasks.settlement_run_task",
        "schedule": crontab(minute=5),
    },
}

# kombu's filesystem transport expects its folders to exist before the first message.
for _folder in {
    app.conf.broker_transport_options.get("data_folder_in"),
    app.conf.broker_transport_options.get("processed_folder"),
    app.conf.broker_transport_options.get("control_folder"),
}:
    if _folder:
        os.makedirs(_folder, exist_ok=True)
