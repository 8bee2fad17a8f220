"""Query filters for the ledger API (django-filter): shape only; selectors scope by org."""

import django_filters

from settlement.models import LedgerAccount, LedgerEntry, LedgerTransaction


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
    created_after = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    created_before = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = LedgerEntry
        fields = ["account", "kind", "reference", "created_after", "created_before"]
