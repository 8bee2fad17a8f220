from django.contrib.auth import views as auth_views
from django.urls import path, reverse_lazy

from portal import views
from portal.forms import LoginForm

app_name = "portal"

auth_urls = [
    path(
        "login/",
        auth_views.LoginView.as_view(
            template_name="portal/login.html",
            authentication_form=LoginForm,
            redirect_authenticated_user=True,
        ),
        name="login",
    ),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("signup/", views.signup, name="signup"),
    path(
        "password/reset/",
        auth_views.PasswordResetView.as_view(
            template_name="portal/password_reset_form.html",
            email_template_name="portal/email/password_reset.txt",
            subject_template_name="portal/email/password_reset_subject.txt",
            success_url=reverse_lazy("portal:password-reset-done"),
        ),
        name="password-reset",
    ),
    path(
        "password/reset/sent/",
        auth_views.PasswordResetDoneView.as_view(template_name="portal/password_reset_done.html"),
        name="password-reset-done",
    ),
    path(
        "password/reset/complete/",
        auth_views.PasswordResetCompleteView.as_view(
            template_name="portal/password_reset_complete.html"
        ),
        name="password-reset-complete",
    ),
    path(
        "password/reset/<uidb64>/<token>/",
        auth_views.PasswordResetConfirmView.as_view(
            template_name="portal/password_reset_confirm.html",
            success_url=reverse_lazy("portal:password-reset-complete"),
        ),
        name="password-reset-confirm",
    ),
    path(
        "password/change/",
        auth_views.PasswordChangeView.as_view(
            template_name="portal/password_change_form.html",
            success_url=reverse_lazy("portal:password-change-done"),
        ),
        name="password-change",
    ),
    path(
        "password/change/done/",
        auth_views.PasswordChangeDoneView.as_view(template_name="portal/password_change_done.html"),
        name="password-change-done",
    ),
]

urlpatterns = [
    *auth_urls,
    path("", views.dashboard, name="dashboard"),
    path("orgs/new/", views.org_create_view, name="org-create"),
    path("orgs/switch/", views.org_switch, name="org-switch"),
    path("topups/new/", views.topup_new, name="topup-new"),
    path("topups/<int:topup_id>/", views.topup_detail, name="topup-detail"),
    path("topups/<int:topup_id>/status/", views.topup_status, name="topup-status"),
    path("api-keys/", views.api_keys, name="api-keys"),
    path("api-keys/<int:api_key_id>/revoke/", views.api_key_revoke_view, name="api-key-revoke"),
    path("markets/", views.markets, name="markets"),
    path("markets/<str:symbol>/", views.market_detail, name="market"),
    path("markets/<str:symbol>/chart.json", views.market_chart_data, name="market-chart-data"),
    path("markets/<str:symbol>/activity/", views.market_activity, name="market-activity"),
    path("markets/<str:symbol>/preview/", views.order_ticket_preview, name="order-preview"),
    path("markets/<str:symbol>/orders/", views.order_ticket_submit, name="order-place"),
    path("orders/<int:order_id>/cancel/", views.order_cancel_view, name="order-cancel"),
    path("endpoints/", views.endpoints, name="endpoints"),
    path("statements/", views.statements, name="statements"),
    path("statements.csv", views.statement_csv, name="statement-csv"),
    path("discrepancies/", views.discrepancies, name="discrepancies"),
    path("payouts/", views.payouts, name="payouts"),
    path("payouts/account/", views.payout_account_view, name="payout-account"),
    path("withdrawals/", views.withdrawals, name="withdrawals"),
]
