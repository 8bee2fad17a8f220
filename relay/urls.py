from django.urls import path

from relay import views

app_name = "relay"

urlpatterns = [path("health/", views.provider_health, name="provider-health")]
