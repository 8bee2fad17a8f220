"""Portal pages for the account: sign-up and sign-in, balances and ledger, card top-ups, API keys.

Pages call the same services and selectors as the REST API, as the member's Principal, so a rule
holds however it is reached. Roles are checked here in the view, not only by hiding a form: a
viewer who posts anyway is refused.
"""

import uuid

from django.conf import settings
from django.contrib import messages
from django.contrib.auth import login
from django.contrib.auth.decorators import login_required
from django.core.paginator import Paginator
from django.db import transaction
from django.http import Http404
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_POST

from accounts.errors import ApiKeyNotFound, EmailTaken, NotAMember
from accounts.middleware import ACTIVE_ORG_SESSION_KEY
from accounts.models import Scope
from accounts.selectors import api_key_list
from accounts.services import (
    api_key_create,
    api_key_revoke,
    membership_for_user,
    org_create,
    user_signup,
)
from core.errors import ApplicationError, IdempotencyKeyReused
from portal.forms import (
    ApiKeyForm,
    OrgCreateForm,
    OrgSwitchForm,
    SignupForm,
    TopUpForm,
    form_apply_error,
)
from portal.views.access import member_required, principal_for, refuse
from settlement.errors import TopUpNotFound
from settlement.filters import LedgerEntryFilter
from settlement.models import LedgerAccount, TopUp
from settlement.selectors import (
    account_balance,
    balances_for_org,
    ledger_entry_list,
    topup_get,
    topup_list,
)
from settlement.services import topup_create

LEDGER_PAGE_SIZE = 25
# The org accounts in the order money moves through them, for the ledger filter.
ACCOUNT_FILTER_CHOICES = [
    (kind.value, kind.label) for kind in LedgerAccount.Kind if kind in LedgerAccount.ORG_KINDS
]


# Sign-up and orgs


@never_cache
def signup(request):
    if request.user.is_authenticated:
        return redirect("portal:dashboard")
    form = SignupForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        data = form.cleaned_data
        try:
            user, org = user_signup(
                email=data["email"],
                password=data["password1"],
                org_name=data["org_name"],
                is_buyer=data["is_buyer"],
                is_provider=data["is_provider"],
            )
        except EmailTaken as error:
            form.add_error("email", error.message)
        except ApplicationError as error:
            form_apply_error(form, error, aliases={"name": "org_name"})
        else:
            login(request, user, backend="django.contrib.auth.backends.ModelBackend")
            # After login(), which starts a fresh session for the new user.
            request.session[ACTIVE_ORG_SESSION_KEY] = org.id
            messages.success(request, f"Welcome! {org.name} is ready.")
            return redirect("portal:dashboard")
    return render(request, "portal/signup.html", {"form": form})


@login_required
def org_create_view(request):
    form = OrgCreateForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                org = org_create(
                    owner=request.user,
                    name=form.cleaned_data["name"],
                    is_buyer=form.cleaned_data["is_buyer"],
                    is_provider=form.cleaned_data["is_provider"],
                )
        except ApplicationError as error:
            form_apply_error(form, error)
        else:
            request.session[ACTIVE_ORG_SESSION_KEY] = org.id
            messages.success(request, f"{org.name} is created; you are its owner.")
            return redirect("portal:dashboard")
    return render(request, "portal/org_create.html", {"form": form})


@require_POST
@login_required
def org_switch(request):
    form = OrgSwitchForm(request.POST)
    if not form.is_valid():
        return refuse(request, "Choose one of your organisations.")
    try:
        membership = membership_for_user(user=request.user, org_id=form.cleaned_data["org_id"])
    except NotAMember as error:
        return refuse(request, error.message)
    request.session[ACTIVE_ORG_SESSION_KEY] = membership.org_id
    messages.success(request, f"You are now acting for {membership.org.name}.")
    return redirect("portal:dashboard")


# Balances and ledger


@member_required
def dashboard(request):
    org = request.active_membership.org
    account = request.GET.get("account", "")
    entries = LedgerEntryFilter(
        {"account": account} if account else {}, queryset=ledger_entry_list(org_id=org.id)
    ).qs
    page = Paginator(entries, LEDGER_PAGE_SIZE).get_page(request.GET.get("page"))
    context = {
        "balances": balances_for_org(org_id=org.id),
        "page": page,
        "account": account,
        "account_choices": ACCOUNT_FILTER_CHOICES,
    }
    return render(request, "portal/dashboard.html", context)


# Top-ups


def _topup_mode() -> dict:
    """How this deployment takes a card: Stripe's hosted Checkout, or a test card (demo only)."""
    is_checkout = settings.STRIPE_TOPUP_MODE == TopUp.Method.CHECKOUT
    test_cards = not is_checkout and settings.STRIPE_ALLOW_TEST_PAYMENT_METHODS
    # With neither, a PaymentIntent must be confirmed in the browser by Stripe.js, which the
    # portal does not load; the API's client_secret is the way to pay then.
    return {"is_checkout": is_checkout, "test_cards": test_cards}


@never_cache  # going back to the form draws a fresh idempotency key
@member_required
def topup_new(request):
    mode = _topup_mode()
    may_top_up = principal_for(request).has_scope(Scope.TRADE)
    can_pay_here = mode["is_checkout"] or mode["test_cards"]
    form = TopUpForm(
        request.POST or None,
        test_cards=mode["test_cards"],
        initial={"idempotency_key": uuid.uuid4()},
    )
    if request.method == "POST":
        if not may_top_up:
            return refuse(request, "Your role can't top up. Ask a trader, admin or owner.")
        if not can_pay_here:
            return refuse(request, "Card top-ups are not available in the portal here.")
        if form.is_valid():
            try:
                topup = topup_create(
                    principal=principal_for(request),
                    amount_micro=form.cleaned_data["amount"],
                    payment_method=form.cleaned_data.get("payment_method") or None,
                    idempotency_key=f"portal-{form.cleaned_data['idempotency_key']}",
                )
            except IdempotencyKeyReused:
                # The first submit of this form paid for something else; a new key makes a new
                # top-up. Any other error keeps the key, so retrying resumes the same payment.
                form.data = form.data.copy()
                form.data["idempotency_key"] = str(uuid.uuid4())
                form.add_error(None, "This form was already used for another amount. Check it.")
            except ApplicationError as error:
                form_apply_error(form, error)
            else:
                if topup.checkout_url and not topup.is_final:
                    return redirect(topup.checkout_url)
                return redirect("portal:topup-detail", topup_id=topup.id)
    context = {
        "form": form if may_top_up and can_pay_here else None,
        "may_top_up": may_top_up,
        "can_pay_here": can_pay_here,
        "topups": topup_list(org_id=request.active_membership.org_id)[:20],
        **mode,
    }
    return render(request, "portal/topup_new.html", context)


def _topup_context(request, topup_id: int) -> dict:
    org_id = request.active_membership.org_id
    try:
        topup = topup_get(org_id=org_id, topup_id=topup_id)
    except TopUpNotFound:
        raise Http404("No such top-up.") from None
    return {
        "topup": topup,
        "available_micro": account_balance(org_id=org_id, kind=LedgerAccount.Kind.AVAILABLE),
    }


@member_required
def topup_detail(request, topup_id: int):
    return render(request, "portal/topup_detail.html", _topup_context(request, topup_id))


@never_cache
@member_required
def topup_status(request, topup_id: int):
    """The status panel alone; HTMX asks for it every second until the top-up is final."""
    return render(request, "portal/_topup_status.html", _topup_context(request, topup_id))


# API keys


@never_cache  # the create response carries a secret
@member_required
def api_keys(request):
    membership = request.active_membership
    principal = principal_for(request)
    form = ApiKeyForm(allowed_scopes=principal.scopes)
    created = None
    if request.method == "POST":
        if not principal.can_manage_keys:
            return refuse(request, "Only admins and owners manage API keys.")
        form = ApiKeyForm(request.POST, allowed_scopes=principal.scopes)
        if form.is_valid():
            try:
                api_key, secret = api_key_create(
                    principal=principal,
                    name=form.cleaned_data["name"],
                    scopes=form.cleaned_data["scopes"],
                    expires_at=form.expires_at,
                )
            except ApplicationError as error:
                form_apply_error(form, error, aliases={"expires_at": "expires_on"})
            else:
                # The secret lives only in this response: it is never stored, in the session or
                # anywhere else, so it can't be shown again.
                created = {"api_key": api_key, "secret": secret}
                form = ApiKeyForm(allowed_scopes=principal.scopes)
    context = {
        "form": form if principal.can_manage_keys else None,
        "created": created,
        "api_keys": api_key_list(org=membership.org).select_related("created_by"),
    }
    return render(request, "portal/api_keys.html", context)


@require_POST
@member_required
def api_key_revoke_view(request, api_key_id: int):
    principal = principal_for(request)
    if not principal.can_manage_keys:
        return refuse(request, "Only admins and owners manage API keys.")
    try:
        api_key = api_key_revoke(principal=principal, api_key_id=api_key_id)
    except ApiKeyNotFound:
        raise Http404("No such API key.") from None
    messages.success(request, f"The key “{api_key.name}” ({api_key.prefix}…) is revoked.")
    return redirect(reverse("portal:api-keys"))
