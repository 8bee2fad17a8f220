"""The operators' console for the exchange: tiers, regions, markets, endpoints, orders, trades.

Tiers and regions are edited here. A market's contract is edited here too, except what existing
orders depend on (lot size and tick) and the engine's counters; its status moves only through the
halt, resume and close actions, which call the services. Endpoints are verified or suspended by
action. Orders and trades are history: read-only for everyone.
"""

import copy

from django import forms
from django.contrib import admin, messages
from django.forms.models import construct_instance
from django.utils.html import format_html, format_html_join

from core.errors import ApplicationError
from core.units import money_display, money_format
from marketplace import selectors
from marketplace.models import (
    Market,
    ModelTier,
    Order,
    OrderReduction,
    ProviderEndpoint,
    Region,
    Trade,
)
from marketplace.services import (
    endpoint_suspend,
    endpoint_verify,
    market_close,
    market_halt,
    market_resume,
)


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


def _apply(modeladmin, request, queryset, service, *, id_argument: str, verb: str) -> None:
    """Run `service` on each selected row, one transaction each, and report what happened."""
    done, refused = 0, []
    for obj in queryset.order_by("id"):
        try:
            service(actor=request.user, **{id_argument: obj.id})
            done += 1
        except ApplicationError as error:
            refused.append(f"{obj}: {error.message}")
    if done:
        modeladmin.message_user(request, f"{verb.capitalize()} {done}.", messages.SUCCESS)
    for note in refused:
        modeladmin.message_user(request, note, messages.WARNING)


@admin.register(ModelTier)
class ModelTierAdmin(admin.ModelAdmin):
    list_display = (
        "name",
        "slug",
        "rank",
        "min_context_tokens",
        "min_output_tokens_per_s",
        "max_ttft_ms",
        "max_output_tokens",
    )
    prepopulated_fields = {"slug": ("name",)}
    search_fields = ("name", "slug")


@admin.register(Region)
class RegionAdmin(admin.ModelAdmin):
    list_display = ("code", "name")
    search_fields = ("code", "name")


class MarketForm(forms.ModelForm):
    class Meta:
        model = Market
        fields = (
            "tier",
            "region",
            "symbol",
            "lot_tokens",
            "tick_micro",
            "min_lots",
            "max_lots",
            "reference_price_micro",
            "band_bp",
            "output_weight_bp",
            "cache_weight_bp",
            "maker_fee_bp",
            "taker_fee_bp",
            "delivery_days",
            "expiry_policy",
        )

    def clean(self):
        # Django skips a constraint when one of its fields is not on the form, and the lot and
        # tick are read-only once a market exists; check every constraint against the whole
        # market as it would be saved, so a bad edit is a form error, not a failed INSERT.
        cleaned = super().clean()
        candidate = construct_instance(self, copy.copy(self.instance))
        try:
            candidate.validate_constraints()
        except forms.ValidationError as error:
            raise forms.ValidationError(error.messages) from None
        return cleaned


@admin.register(Market)
class MarketAdmin(admin.ModelAdmin):
    form = MarketForm
    list_display = (
        "symbol",
        "tier",
        "region",
        "status",
        "reference_price",
        "lot_tokens",
        "maker_fee_bp",
        "taker_fee_bp",
        "delivery_days",
    )
    list_filter = ("status", "tier", "region")
    search_fields = ("symbol",)
    actions = ("halt", "resume", "close")
    readonly_fields = ("status", "last_sequence", "book_version", "created_at", "book")

    def get_readonly_fields(self, request, obj=None):
        fields = super().get_readonly_fields(request, obj)
        if obj is not None:
            # Open orders are priced on this grid and sized in these lots.
            return (*fields, "tier", "region", "lot_tokens", "tick_micro")
        return fields

    @admin.display(description="reference price per 1M")
    def reference_price(self, obj: Market) -> str:
        return money_display(obj.reference_price_micro)

    @admin.display(description="book (open orders)")
    def book(self, obj: Market) -> str:
        if obj.pk is None:
            return "-"
        depth = selectors.book_depth(market=obj, levels=10)
        rows = [("bid", level) for level in depth.bids] + [("ask", level) for level in depth.asks]
        if not rows:
            return "empty"
        return format_html(
            "<table><tr><th>side</th><th>price</th><th>lots</th><th>orders</th></tr>{}</table>",
            format_html_join(
                "",
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                (
                    (side, money_format(level.price_micro), level.lots, level.orders)
                    for side, level in rows
                ),
            ),
        )

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # markets are referenced by orders and trades; close them instead

    @admin.action(description="Halt trading (keep the book)")
    def halt(self, request, queryset) -> None:
        _apply(self, request, queryset, market_halt, id_argument="market_id", verb="halted")

    @admin.action(description="Resume trading")
    def resume(self, request, queryset) -> None:
        _apply(self, request, queryset, market_resume, id_argument="market_id", verb="resumed")

    @admin.action(description="Close for good")
    def close(self, request, queryset) -> None:
        _apply(self, request, queryset, market_close, id_argument="market_id", verb="closed")


@admin.register(ProviderEndpoint)
class ProviderEndpointAdmin(admin.ModelAdmin):
    list_display = (
        "id",
        "org",
        "market",
        "base_url",
        "capacity_tokens_per_day",
        "status",
        "verified_at",
    )
    list_filter = ("status", "market")
    search_fields = ("org__name", "base_url")
    actions = ("verify", "suspend")
    readonly_fields = (
        "org",
        "market",
        "base_url",
        "models",
        "capacity_tokens_per_day",
        "status",
        "verified_by",
        "verified_at",
        "created_at",
        "updated_at",
    )

    def has_add_permission(self, request, obj=None) -> bool:
        return False  # providers register their own endpoints

    def has_delete_permission(self, request, obj=None) -> bool:
        return False

    @admin.action(description="Verify the selected endpoints")
    def verify(self, request, queryset) -> None:
        _apply(self, request, queryset, endpoint_verify, id_argument="endpoint_id", verb="verified")

    @admin.action(description="Suspend the selected endpoints")
    def suspend(self, request, queryset) -> None:
        _apply(
            self, request, queryset, endpoint_suspend, id_argument="endpoint_id", verb="suspended"
        )


class OrderReductionInline(admin.TabularInline):
    model = OrderReduction
    fields = ("by_lots", "lots_after", "idempotency_key", "created_by", "created_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Order)
class OrderAdmin(ReadOnlyAdmin):
    inlines = (OrderReductionInline,)
    list_display = (
        "id",
        "org",
        "market",
        "side",
        "type",
        "tif",
        "price",
        "lots",
        "filled_lots",
        "status",
        "sequence",
        "created_at",
    )
    list_filter = ("status", "side", "type", "market")
    search_fields = ("=id", "org__name", "client_order_id")
    list_select_related = ("org", "market")

    @admin.display(description="price per 1M")
    def price(self, obj: Order) -> str:
        return "market" if obj.price_micro is None else money_display(obj.price_micro)


@admin.register(Trade)
class TradeAdmin(ReadOnlyAdmin):
    list_display = (
        "id",
        "market",
        "buyer_org",
        "seller_org",
        "price",
        "lots",
        "tokens",
        "notional",
        "sequence",
        "created_at",
    )
    list_filter = ("market",)
    search_fields = ("=id", "buyer_org__name", "seller_org__name")
    list_select_related = ("market", "buyer_org", "seller_org")

    @admin.display(description="price per 1M")
    def price(self, obj: Trade) -> str:
        return money_display(obj.price_micro)

    @admin.display(description="notional")
    def notional(self, obj: Trade) -> str:
        return money_display(obj.notional_micro)
