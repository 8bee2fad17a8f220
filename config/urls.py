from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

from settlement.console import settlement_dashboard
from settlement.views import stripe_webhook

api_v1 = [
    path("", include("accounts.urls")),
    path("", include("settlement.urls")),
    path("", include("marketplace.urls")),
]

urlpatterns = [
    path("api/v1/", include(api_v1)),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="api-docs"),
    path(
        "api/redoc/",
        SpectacularRedocView.as_view(url_name="schema", template_name="core/redoc.html"),
        name="api-redoc",
    ),
    path("stripe/webhook/", stripe_webhook, name="stripe-webhook"),
    path("relay/", include("relay.urls")),
    # The settlement console's dashboard: an admin page that belongs to no one model, so it is
    # routed here, ahead of the admin's own URLs, and guarded by the admin's staff check.
    path(
        "admin/settlement/dashboard/",
        admin.site.admin_view(settlement_dashboard),
        name="settlement-dashboard",
    ),
    path("admin/", admin.site.urls),
    path("", include("portal.urls")),
]

handler404 = "config.handlers.not_found"
handler500 = "config.handlers.server_error"
