from django.urls import path

from settlement import apis

urlpatterns = [
    path("balances", apis.BalancesApi.as_view(), name="balances"),
    path("ledger", apis.LedgerListApi.as_view(), name="ledger"),
    path("topups", apis.TopUpCollectionApi.as_view(), name="topups"),
    path("topups/<int:topup_id>", apis.TopUpDetailApi.as_view(), name="topup-detail"),
]
