"""The Celery application. Tasks live in each app's tasks.py; periodic tasks are declared below."""

import os

from celery import Celery

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
}

# kombu's filesystem transport expects its folders to exist before the first message.
for _folder in {
    app.conf.broker_transport_options.get("data_folder_in"),
    app.conf.broker_transport_options.get("processed_folder"),
}:
    if _folder:
        os.makedirs(_folder, exist_ok=True)
