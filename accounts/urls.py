from django.urls import path

from accounts import apis

urlpatterns = [
    path("me", apis.MeApi.as_view(), name="me"),
    path("api-keys", apis.ApiKeyCollectionApi.as_view(), name="api-keys"),
    path("api-keys/<int:api_key_id>", apis.ApiKeyDetailApi.as_view(), name="api-key-detail"),
]
