from django.urls import path

from marketplace import apis

urlpatterns = [
    path("markets", apis.MarketListApi.as_view(), name="markets"),
    path("markets/<str:symbol>", apis.MarketDetailApi.as_view(), name="market-detail"),
    path("orders", apis.OrderCollectionApi.as_view(), name="orders"),
    path("orders/preview", apis.OrderPreviewApi.as_view(), name="order-preview"),
    path("orders/cancel-all", apis.OrderCancelAllApi.as_view(), name="orders-cancel-all"),
    path("orders/<int:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel", apis.OrderCancelApi.as_view(), name="order-cancel"),
    path("orders/<int:order_id>/reduce", apis.OrderReduceApi.as_view(), name="order-reduce"),
    path("endpoints", apis.EndpointCollectionApi.as_view(), name="endpoints"),
]
