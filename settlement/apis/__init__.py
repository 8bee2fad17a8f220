"""The settlement REST API, one module a subject; every view is re-exported here."""

from settlement.apis.money import BalancesApi, LedgerListApi, TopUpCollectionApi, TopUpDetailApi
from settlement.apis.payouts import (
    PayoutAccountConnectApi,
    PayoutCollectionApi,
    WithdrawalCollectionApi,
)
from settlement.apis.statements import DiscrepancyListApi, StatementCsvApi, StatementGetApi
from settlement.apis.usage import CreditGetApi, EntitlementListApi, UsageIngestApi

__all__ = [
    "BalancesApi",
    "CreditGetApi",
    "DiscrepancyListApi",
    "EntitlementListApi",
    "LedgerListApi",
    "PayoutAccountConnectApi",
    "PayoutCollectionApi",
    "StatementCsvApi",
    "StatementGetApi",
    "TopUpCollectionApi",
    "TopUpDetailApi",
    "UsageIngestApi",
    "WithdrawalCollectionApi",
]
