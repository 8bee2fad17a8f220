"""The relay in the operators' console: key policies (edited), endpoint health and requests (read).

Health is the relay's own rolling window (relay.health): success rate, time to first token and
output speed per endpoint, and the class routing gives it.
"""

from django.contrib import admin

from core.units import money_display
from relay import health
from relay.models import EndpointHealth, KeyPolicy, RelayRequest


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False


@admin.register(KeyPolicy)
class KeyPolicyAdmin(admin.ModelAdmin):
    list_display = [
        "api_key",
        "default_region",
        "spend_cap_micro",
        "spend_window",
        "requests_per_minute",
        "tokens_per_minute",
    ]
    raw_id_fields = ["api_key"]


@admin.register(EndpointHealth)
class EndpointHealthAdmin(ReadOnlyAdmin):
    list_display = [
        "id",
        "org",
        "market",
        "status",
        "window_requests",
        "success_rate",
        "ttft",
        "speed",
        "routing",
    ]
    list_select_related = ["org", "market"]
    list_filter = ["status", "market"]
    fields = ["org", "market", "base_url", "status"]

    def get_queryset(self, request):
        return super().get_queryset(request).order_by("market", "id")

    def changelist_view(self, request, extra_context=None):
        self._health = None
        return super().changelist_view(request, extra_context)

    def _figures(self, obj) -> health.Health:
        # One query for the page: the first row asks for every endpoint in the window.
        if getattr(self, "_health", None) is None:
            ids = list(EndpointHealth.objects.values_list("id", flat=True))
            self._health = health.health_for(ids)
        return self._health.get(obj.id, health.Health())

    @admin.display(description="requests (window)")
    def window_requests(self, obj) -> int:
        return self._figures(obj).requests

    @admin.display(description="success")
    def success_rate(self, obj) -> str:
        rate = self._figures(obj).success_bp
        return "-" if rate is None else f"{rate / 100:.2f} %"

    @admin.display(description="TTFT")
    def ttft(self, obj) -> str:
        value = self._figures(obj).ttft_ms
        return "-" if value is None else f"{value} ms"

    @admin.display(description="tokens/s")
    def speed(self, obj) -> str:
        value = self._figures(obj).tokens_per_s
        return "-" if value is None else str(value)

    @admin.display(description="routing")
    def routing(self, obj) -> str:
        figures = self._figures(obj)
        if figures.requests < health.MIN_REQUESTS:
            return f"normal (not judged: under {health.MIN_REQUESTS} requests)"
        return health.CLASS_NAMES[figures.health_class]


@admin.register(RelayRequest)
class RelayRequestAdmin(ReadOnlyAdmin):
    list_display = [
        "request_id",
        "created_at",
        "buyer_org",
        "market",
        "provider_org",
        "model",
        "status",
        "is_streamed",
        "is_estimated",
        "billable_tokens",
        "cost",
        "attempts",
        "ttft_ms",
        "duration_ms",
    ]
    list_filter = ["status", "kind", "is_streamed", "is_estimated", "market"]
    list_select_related = ["buyer_org", "market", "provider_org"]
    search_fields = ["request_id"]

    @admin.display(description="cost")
    def cost(self, obj) -> str:
        return money_display(obj.cost_micro)
