from django.urls import path

from settlement import apis

urlpatterns = [
    path("balances", apis.BalancesApi.as_view(), name="balances"),
    path("ledger", apis.LedgerListApi.as_view(), name="ledger"),
    path("topups", apis.TopUpCollectionApi.as_view(), name="topups"),
    path("entitlements", apis.EntitlementListApi.as_view(), name="entitlements"),
    path("topups/<int:topup_id>", apis.TopUpDetailApi.as_view(), name="topup-detail"),
    path("payouts", apis.PayoutCollectionApi.as_view(), name="payouts"),
    path("payout-account", apis.PayoutAccountConnectApi.as_view(), name="payout-account"),
    path("withdrawals", apis.WithdrawalCollectionApi.as_view(), name="withdrawals"),
    path("usage", apis.UsageIngestApi.as_view(), name="usage"),
    path("credit", apis.CreditGetApi.as_view(), name="credit"),
    path("discrepancies", apis.DiscrepancyListApi.as_view(), name="discrepancies"),
    path("statements", apis.StatementGetApi.as_view(), name="statements"),
    path("statements.csv", apis.StatementCsvApi.as_view(), name="statements-csv"),
]
