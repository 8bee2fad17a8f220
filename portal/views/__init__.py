"""Portal pages. Each module holds one subject; the names here are what portal/urls.py routes."""

from portal.views.accounts import (
    api_key_revoke_view,
    api_keys,
    dashboard,
    org_create_view,
    org_switch,
    signup,
    topup_detail,
    topup_new,
    topup_status,
)
from portal.views.exchange import (
    market_activity,
    market_chart_data,
    market_detail,
    markets,
    order_cancel_view,
    order_ticket_preview,
    order_ticket_submit,
)
from portal.views.provider import endpoints
from portal.views.settlement import (
    discrepancies,
    payout_account_view,
    payouts,
    statement_csv,
    statements,
    withdrawals,
)

__all__ = [
    "api_key_revoke_view",
    "api_keys",
    "dashboard",
    "discrepancies",
    "endpoints",
    "market_activity",
    "market_chart_data",
    "market_detail",
    "markets",
    "order_cancel_view",
    "order_ticket_preview",
    "order_ticket_submit",
    "org_create_view",
    "org_switch",
    "payout_account_view",
    "payouts",
    "signup",
    "statement_csv",
    "statements",
    "topup_detail",
    "topup_new",
    "topup_status",
    "withdrawals",
]
