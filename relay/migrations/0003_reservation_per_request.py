# One reservation row per request in flight, so a crashed relay's reservations can be swept.
# The relay holds nothing between requests, so the old aggregate rows are simply replaced.

import django.db.models.deletion
import django.utils.timezone
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("relay", "0002_endpointhealth"),
        ("settlement", "0006_transaction_kinds_for_settlement"),
    ]

    operations = [
        migrations.DeleteModel(name="EntitlementReservation"),
        migrations.CreateModel(
            name="EntitlementReservation",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                ("request_id", models.CharField(max_length=64, unique=True)),
                ("tokens", models.BigIntegerField()),
                ("created_at", models.DateTimeField(default=django.utils.timezone.now)),
                (
                    "entitlement",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="relay_reservations",
                        to="settlement.entitlement",
                    ),
                ),
            ],
            options={
                "indexes": [models.Index(fields=["created_at"], name="relay_reservation_age")],
                "constraints": [
                    models.CheckConstraint(
                        condition=models.Q(("tokens__gt", 0)), name="relay_reservation_positive"
                    )
                ],
            },
        ),
    ]
