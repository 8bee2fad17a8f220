from datetime import UTC

import django.db.models.deletion
from django.db import migrations, models
from django.db.models import OuterRef, Subquery
from django.db.models.functions import TruncHour


def draw_hours_backfill(apps, schema_editor):
    """Give every draw written before this migration its record's hour, in one UPDATE."""
    usage_draw = apps.get_model("settlement", "UsageDraw")
    usage_record = apps.get_model("settlement", "UsageRecord")
    record_hour = (
        usage_record.objects.filter(pk=OuterRef("usage_record_id"))
        .annotate(ended_hour=TruncHour("ended_at", tzinfo=UTC))
        .values("ended_hour")[:1]
    )
    usage_draw.objects.using(schema_editor.connection.alias).update(hour=Subquery(record_hour))


class Migration(migrations.Migration):
    dependencies = [
        ("settlement", "0012_leaner_usage_writes"),
    ]

    operations = [
        migrations.AddField(
            model_name="usagedraw",
            name="hour",
            field=models.DateTimeField(
                null=True, help_text="Start of the hour (UTC) the record ended in."
            ),
        ),
        migrations.RunPython(draw_hours_backfill, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="usagedraw",
            name="hour",
            field=models.DateTimeField(help_text="Start of the hour (UTC) the record ended in."),
        ),
        migrations.AlterField(
            model_name="usagedraw",
            name="entitlement",
            field=models.ForeignKey(
                db_index=False,
                on_delete=django.db.models.deletion.PROTECT,
                related_name="usage_draws",
                to="settlement.entitlement",
            ),
        ),
        migrations.AddIndex(
            model_name="usagedraw",
            index=models.Index(fields=["hour", "entitlement"], name="usage_draw_hour"),
        ),
        migrations.AddIndex(
            model_name="usagerecord",
            index=models.Index(
                condition=models.Q(
                    ("payg_cost_micro__gt", 0), models.Q(("source", "relay"), _negated=True)
                ),
                fields=["payg_cost_micro"],
                name="usage_payg_charged",
            ),
        ),
    ]
