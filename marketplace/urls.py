from django.urls import path

from marketplace import apis

urlpatterns = [
    path("markets", apis.MarketListApi.as_view(), name="markets"),
    path("markets/<str:symbol>", apis.MarketDetailApi.as_view(), name="market-detail"),
    path("markets/<str:symbol>/book", apis.MarketBookApi.as_view(), name="market-book"),
    path("markets/<str:symbol>/trades", apis.MarketTradeListApi.as_view(), name="market-trades"),
    path("markets/<str:symbol>/candles", apis.MarketCandleListApi.as_view(), name="market-candles"),
    path("markets/<str:symbol>/ticker", apis.MarketTickerApi.as_view(), name="market-ticker"),
    path("index", apis.TierIndexListApi.as_view(), name="index"),
    path("index/<str:tier>", apis.TierIndexHistoryApi.as_view(), name="index-history"),
    path("trades", apis.TradeListApi.as_view(), name="trades"),
    path("orders", apis.OrderCollectionApi.as_view(), name="orders"),
    path("orders/preview", apis.OrderPreviewApi.as_view(), name="order-preview"),
    path("orders/cancel-all", apis.OrderCancelAllApi.as_view(), name="orders-cancel-all"),
    path("orders/<int:order_id>", apis.OrderDetailApi.as_view(), name="order-detail"),
    path("orders/<int:order_id>/cancel", apis.OrderCancelApi.as_view(), name="order-cancel"),
    path("orders/<int:order_id>/reduce", apis.OrderReduceApi.as_view(), name="order-reduce"),
    path("endpoints", apis.EndpointCollectionApi.as_view(), name="endpoints"),
]
