"""Query filters for the ledger API (django-filter): shape only; selectors scope by org."""

from datetime import UTC

import django_filters

from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction


class UtcIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    """An ISO 8601 time, compared in UTC.

    ISO 8601 allows offsets up to ±23:59 but PostgreSQL only up to ±15:59, so a time with a
    valid but far offset (`+21:48`) would reach the database as an error; in UTC it is fine.
    """

    def filter(self, qs, value):
        return super().filter(qs, value.astimezone(UTC) if value is not None else value)


class LedgerEntryFilter(django_filters.FilterSet):
    account = django_filters.ChoiceFilter(
        field_name="account__kind",
        choices=[(k, k) for k in sorted(LedgerAccount.ORG_KINDS)],
        help_text="Only entries on this account of the org.",
    )
    kind = django_filters.ChoiceFilter(
        field_name="transaction__kind",
        choices=LedgerTransaction.Kind.choices,
        help_text="Only entries of this transaction kind.",
    )
    reference = django_filters.CharFilter(field_name="transaction__reference")
    created_after = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = UtcIsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = LedgerEntry
        fields = ["account", "kind", "reference", "created_after", "created_before"]
