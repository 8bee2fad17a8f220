from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView

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
    path("admin/", admin.site.urls),
    path("", include("portal.urls")),
]

handler404 = "config.handlers.not_found"
handler500 = "config.handlers.server_error"
