"""The settlement pages: statements (and their CSV), discrepancies, payouts and withdrawals.

Stripe is faked at the gateway edge, `settlement.stripe_gateway`, as the settlement payout tests
do: the one module of ours that talks to Stripe. The tasks that send payouts and refunds are
queued on commit; tests capture those callbacks and run them only where the send is the point.
"""

import csv
import io
import uuid
from datetime import UTC, timedelta

import pytest
from django.db import transaction
from django.utils import timezone

from accounts.models import Role
from accounts.principal import Principal
from core.units import money_display
from settlement import stripe_gateway
from settlement.models import (
    Discrepancy,
    LedgerAccount,
    LedgerTransaction,
    Payout,
    PayoutAccount,
    TopUp,
    Withdrawal,
)
from settlement.selectors import account_balance
from settlement.services import (
    hold_place,
    ledger_check,
    ledger_post,
    org_account,
    platform_account,
    transfer,
)
from tests.accounts.factories import MembershipFactory, OrgFactory
from tests.marketplace.factories import MarketFactory

pytestmark = pytest.mark.django_db

Kind = LedgerAccount.Kind
FUNDS = 100_000_000  # $100
EARNINGS = 100_000_000  # $100


class FakeStripe:
    """The gateway's functions these pages reach, answering as Stripe would; records each call."""

    def __init__(self):
        self.transfers: list[dict] = []
        self.accounts: list[dict] = []
        self.links: list[dict] = []
        self.refunds: list[dict] = []

    def transfer_create(self, **call) -> stripe_gateway.TransferResult:
        self.transfers.append(call)
        return stripe_gateway.TransferResult(
            id=f"tr_{len(self.transfers)}",
            amount_cents=call["amount_cents"],
            destination=call["destination"],
        )

    def connected_account_create(self, **call) -> stripe_gateway.ConnectedAccountResult:
        self.accounts.append(call)
        return stripe_gateway.ConnectedAccountResult(id="acct_portal_1")

    def account_link_create(self, **call) -> stripe_gateway.AccountLinkResult:
        self.links.append(call)
        return stripe_gateway.AccountLinkResult(
            url=f"https://connect.stripe.test/setup/{len(self.links)}", expires_at=0
        )

    def refund_create(self, **call) -> stripe_gateway.RefundResult:
        self.refunds.append(call)
        return stripe_gateway.RefundResult(
            id=f"re_{len(self.refunds)}", status="succeeded", amount_cents=call["amount_cents"]
        )


@pytest.fixture(autouse=True)
def gateway(monkeypatch) -> FakeStripe:
    fake = FakeStripe()
    for name in ("transfer_create", "connected_account_create", "account_link_create"):
        monkeypatch.setattr(stripe_gateway, name, getattr(fake, name))
    monkeypatch.setattr(stripe_gateway, "refund_create", fake.refund_create)
    return fake


def _earn(org_id: int, amount_micro: int) -> None:
    """Provider proceeds, as delivery settlement books them (from the platform here)."""
    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TRANSFER,
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=org_id, kind=Kind.EARNED),
                amount_micro,
            ),
            reference=f"test-earnings:{org_id}",
        )


def _provider_org(**fields):
    return OrgFactory(name="Fast Inference", is_buyer=False, is_provider=True, **fields)


@pytest.fixture
def provider_client(member_client):
    """An owner of a provider org with an enabled payout account and $100 earned."""
    client, membership = member_client(role=Role.OWNER, org=_provider_org())
    PayoutAccount.objects.create(
        org=membership.org,
        stripe_account_id="acct_test_1",
        onboarding_status=PayoutAccount.Onboarding.ENABLED,
    )
    _earn(membership.org_id, EARNINGS)
    return client, membership


def _payout_balances(org_id: int) -> tuple[int, int]:
    return (
        account_balance(org_id=org_id, kind=Kind.EARNED),
        account_balance(org_id=org_id, kind=Kind.PAYOUT_PENDING),
    )


def _key() -> str:
    return str(uuid.uuid4())


def _api(api_for, org):
    """A REST client for `org`, through a key of a new owner (viewers can't make keys)."""
    return api_for(Principal.for_membership(MembershipFactory(org=org, role=Role.OWNER)))


def _utc(moment) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


# Pages render for the right roles, and the nav links to them


@pytest.mark.parametrize("role", [Role.VIEWER, Role.TRADER, Role.OWNER])
@pytest.mark.parametrize(("is_buyer", "is_provider"), [(True, False), (False, True), (True, True)])
def test_statements_and_discrepancies_render_for_every_member(
    member_client, role, is_buyer, is_provider
):
    org = OrgFactory(is_buyer=is_buyer, is_provider=is_provider)
    client, _ = member_client(role=role, org=org)

    statement = client.get("/statements/")
    listing = client.get("/discrepancies/")

    assert statement.status_code == 200
    assert listing.status_code == 200
    html = statement.content.decode()
    assert 'href="/statements/"' in html and 'href="/discrepancies/"' in html
    assert ('href="/payouts/"' in html) is is_provider
    assert ('href="/withdrawals/"' in html) is is_buyer


def test_payouts_are_for_providers_and_withdrawals_for_buyers(member_client):
    buyer_client, _ = member_client(role=Role.OWNER, org=OrgFactory())
    provider_client, _ = member_client(role=Role.OWNER, org=_provider_org())

    refused_payouts = buyer_client.get("/payouts/")
    refused_post = buyer_client.post("/payouts/", {"amount": "1.00", "idempotency_key": "x"})
    refused_withdrawals = provider_client.get("/withdrawals/")

    assert refused_payouts.status_code == 403
    assert "Only provider organisations are paid out" in refused_payouts.content.decode()
    assert refused_post.status_code == 403
    assert refused_withdrawals.status_code == 403
    assert buyer_client.get("/withdrawals/").status_code == 200
    assert provider_client.get("/payouts/").status_code == 200
    assert Payout.objects.count() == 0


# Statements


@pytest.fixture
def moved(member_client, fund):
    """A buyer funded with $100 before `start`, then $20 held for a bid after it."""
    client, membership = member_client(role=Role.VIEWER, org=OrgFactory(name="Acme Buyer"))
    fund(membership.org_id, FUNDS)
    start = timezone.now()
    with transaction.atomic():
        hold_place(org_id=membership.org_id, amount_micro=20_000_000, reference="bid:statement")
    end = timezone.now() + timedelta(hours=1)
    return client, membership, start, end


def test_the_statement_page_shows_the_apis_figures_for_the_same_period(moved, api_for):
    client, membership, start, end = moved
    period = {"period_start": _utc(start), "period_end": _utc(end)}

    page = client.get("/statements/", period)
    api = _api(api_for, membership.org).get("/api/v1/statements", period).json()

    assert page.status_code == 200
    shown = {
        account.kind: {
            "opening": account.opening_micro,
            "credits": account.credits_micro,
            "debits": account.debits_micro,
            "closing": account.closing_micro,
        }
        for account in page.context["accounts"]
    }
    from_api = {
        line["account"]: {
            name: int(line[name].replace(".", "")) for name in ("opening", "credits", "debits")
        }
        | {"closing": int(line["closing"].replace(".", ""))}
        for line in api["lines"]
    }
    assert shown == from_api
    assert shown == {
        Kind.AVAILABLE: {
            "opening": FUNDS,
            "credits": 0,
            "debits": 20_000_000,
            "closing": 80_000_000,
        },
        Kind.HELD: {"opening": 0, "credits": 20_000_000, "debits": 0, "closing": 20_000_000},
    }
    html = page.content.decode()
    assert "Hold placed" in html and money_display(-20_000_000) in html
    assert "window.print()" in html and "Download CSV" in html
    # Both accounts together: the hold moved money between them, not out.
    assert page.context["totals"] == {"USD": (FUNDS, 20_000_000, 20_000_000, FUNDS)}
    assert ledger_check() == []


def test_the_default_statement_is_this_utc_month_so_far(moved):
    client, _, _, _ = moved

    page = client.get("/statements/")

    now = timezone.now().astimezone(UTC)
    assert page.context["period_start"] == now.replace(
        day=1, hour=0, minute=0, second=0, microsecond=0
    )
    assert page.context["is_so_far"] is True
    available = next(a for a in page.context["accounts"] if a.kind == Kind.AVAILABLE)
    # Funded and held within this month: nothing before it, both movements in it.
    assert (available.opening_micro, available.closing_micro) == (0, 80_000_000)
    assert dict(available.movements) == {"Transfer": FUNDS, "Hold placed": -20_000_000}


def test_days_in_the_picker_include_both_ends(moved):
    client, _, _, _ = moved
    today = timezone.now().astimezone(UTC).date()

    page = client.get(
        "/statements/", {"period_start": today.isoformat(), "period_end": today.isoformat()}
    )

    assert page.context["period_start"].date() == today
    assert page.context["period_end"] - page.context["period_start"] == timedelta(days=1)
    held = next(a for a in page.context["accounts"] if a.kind == Kind.HELD)
    assert held.closing_micro == 20_000_000


@pytest.mark.parametrize(
    ("start", "end", "message"),
    [
        ("2026-02-10", "2026-02-01", "End on or after the start."),
        ("2024-01-01", "2026-01-01", "at most 366 days"),
        ("last tuesday", "2026-01-01", "Enter a date such as"),
    ],
)
def test_a_bad_period_shows_an_error_and_no_statement(moved, start, end, message):
    client, _, _, _ = moved

    page = client.get("/statements/", {"period_start": start, "period_end": end})
    download = client.get("/statements.csv", {"period_start": start, "period_end": end})

    assert page.status_code == 200
    assert page.context["accounts"] is None
    assert message in page.content.decode()
    assert download.status_code == 400


def test_the_csv_download_has_the_header_rows_and_total_as_the_api(moved, api_for):
    client, membership, start, end = moved
    period = {"period_start": _utc(start), "period_end": _utc(end)}
    page = client.get("/statements/", period)

    download = client.get(page.context["csv_url"])
    api = _api(api_for, membership.org).get("/api/v1/statements.csv", period)

    assert download.status_code == 200
    assert download["Content-Type"].startswith("text/csv")
    assert download["Content-Disposition"].startswith('attachment; filename="statement-')
    rows = list(csv.reader(io.StringIO(download.content.decode())))
    assert rows == [
        ["account", "currency", "opening", "credits", "debits", "closing"],
        ["available", "USD", "100.000000", "0.000000", "20.000000", "80.000000"],
        ["held", "USD", "0.000000", "20.000000", "0.000000", "20.000000"],
        ["total", "USD", "100.000000", "20.000000", "20.000000", "100.000000"],
    ]
    assert download.content == api.content


def test_a_statement_holds_only_the_active_orgs_accounts(moved, member_client, fund):
    client, _, _, end = moved
    _, other = member_client(role=Role.OWNER, org=OrgFactory(name="Someone Else"))
    fund(other.org_id, 7_000_000)

    page = client.get(
        "/statements/", {"period_start": _utc(end - timedelta(days=2)), "period_end": _utc(end)}
    )

    closing = sum(account.closing_micro for account in page.context["accounts"])
    assert closing == FUNDS
    assert "7.00" not in page.content.decode()


# Discrepancies


@pytest.fixture
def pair_discrepancies(staff):
    buyer_org = OrgFactory(name="Acme Buyer")
    seller_org = _provider_org()
    market = MarketFactory(symbol="FRONTIER-EU")
    hour = timezone.now().replace(minute=0, second=0, microsecond=0) - timedelta(hours=5)
    common = {"buyer_org": buyer_org, "provider_org": seller_org, "market": market}
    resolved = Discrepancy.objects.create(
        **common,
        hour=hour + timedelta(hours=2),  # the newer hour, but resolved: listed after the open one
        primary_tokens=1_200_000,
        other_tokens=1_310_000,
        source=Discrepancy.Source.PROVIDER,
        status=Discrepancy.Status.RESOLVED,
        resolution=Discrepancy.Resolution.STATED,
        resolved_tokens=1_250_000,
        reason="Split the difference.",
        resolved_by=staff,
        resolved_at=timezone.now(),
    )
    held = Discrepancy.objects.create(
        **common,
        hour=hour,
        primary_tokens=900_000,
        other_tokens=0,
        source=Discrepancy.Source.BUYER,
        is_missing=True,
    )
    stranger = OrgFactory(name="Stranger Co")
    Discrepancy.objects.create(
        buyer_org=stranger,
        provider_org=seller_org,
        market=market,
        hour=hour,
        primary_tokens=5,
        other_tokens=99_999,
        source=Discrepancy.Source.BUYER,
    )
    return buyer_org, seller_org, held, resolved


@pytest.mark.parametrize("side", ["buyer", "provider"])
def test_discrepancies_list_the_orgs_pairs_open_first_with_both_figures(
    member_client, pair_discrepancies, side
):
    buyer_org, seller_org, held, resolved = pair_discrepancies
    org = buyer_org if side == "buyer" else seller_org
    client, _ = member_client(role=Role.VIEWER, org=org)

    page = client.get("/discrepancies/")

    listed = list(page.context["page"].object_list)
    if side == "buyer":
        assert listed == [held, resolved]  # the stranger's pair is not the buyer's
    else:
        assert listed[0].is_open and resolved in listed and len(listed) == 3
    html = page.content.decode()
    assert "FRONTIER-EU" in html and "Acme Buyer" in html and "Fast Inference" in html
    assert "1,200,000" in html and "1,310,000" in html and "+110,000" in html
    assert "never came" in html  # the held hour's buyer report
    assert "A stated figure" in html and "1,250,000" in html and "Split the difference." in html
    assert ("Stranger Co" in html) is (side == "provider")
    # Read-only: nothing on the page posts.
    assert 'method="post" action="/discrepancies' not in html


def test_discrepancies_filter_by_status(member_client, pair_discrepancies):
    buyer_org, _, held, _ = pair_discrepancies
    client, _ = member_client(role=Role.VIEWER, org=buyer_org)

    page = client.get("/discrepancies/", {"status": "open"})

    assert list(page.context["page"].object_list) == [held]
    assert page.context["open_count"] == 1


# Payouts


def test_the_payouts_page_shows_earnings_the_account_and_the_forms(provider_client):
    client, _ = provider_client

    page = client.get("/payouts/")

    html = page.content.decode()
    assert page.status_code == 200
    assert money_display(EARNINGS) in html
    assert "acct_test_1" in html and "Enabled for payouts" in html
    assert 'data-testid="payout-form"' in html and 'data-testid="payout-account-form"' in html
    assert page.context["payout_form"]["idempotency_key"].value()  # drawn when the form renders


def test_a_payout_request_makes_one_payout_and_moves_earned_to_pending(
    provider_client, gateway, django_capture_on_commit_callbacks
):
    client, membership = provider_client
    form = client.get("/payouts/").context["payout_form"]
    key = str(form["idempotency_key"].value())

    with django_capture_on_commit_callbacks(execute=False) as queued:
        response = client.post("/payouts/", {"amount": "40.00", "idempotency_key": key})

    assert response.status_code == 302 and response["Location"] == "/payouts/"
    payout = Payout.objects.get()
    assert (payout.org_id, payout.amount_micro, payout.status) == (
        membership.org_id,
        40_000_000,
        Payout.Status.PENDING,
    )
    assert payout.requested_by == membership.user
    assert payout.idempotency_key == f"portal-{key}"
    assert _payout_balances(membership.org_id) == (60_000_000, 40_000_000)
    assert len(queued) == 1 and gateway.transfers == []  # the send waits for a worker
    page = client.get("/payouts/").content.decode()
    assert f"Payout #{payout.id} of $40.00 is requested" in page
    assert f'data-payout="{payout.id}"' in page
    assert ledger_check() == []


def test_a_double_submit_makes_one_payout_and_one_transfer(
    provider_client, gateway, django_capture_on_commit_callbacks
):
    client, membership = provider_client
    fields = {"amount": "25.00", "idempotency_key": "7b7fbb59-8f1e-4bb6-a3c5-4fd1a8ef3a01"}

    with django_capture_on_commit_callbacks(execute=True):
        first = client.post("/payouts/", fields)
    with django_capture_on_commit_callbacks(execute=True):
        second = client.post("/payouts/", fields)

    assert first.status_code == second.status_code == 302
    payout = Payout.objects.get()
    assert payout.status == Payout.Status.SENT and payout.stripe_transfer_id == "tr_1"
    assert len(gateway.transfers) == 1
    assert gateway.transfers[0]["amount_cents"] == 2_500
    assert gateway.transfers[0]["destination"] == "acct_test_1"
    assert _payout_balances(membership.org_id) == (75_000_000, 25_000_000)
    assert ledger_check() == []


def test_a_blank_amount_pays_out_everything_earned(provider_client):
    client, membership = provider_client

    client.post("/payouts/", {"amount": "", "idempotency_key": _key()})

    assert Payout.objects.get().amount_micro == EARNINGS
    assert _payout_balances(membership.org_id) == (0, EARNINGS)


@pytest.mark.parametrize(
    ("amount", "message"),
    [
        ("abc", "Enter an amount in US dollars"),
        ("0", "Enter an amount above zero."),
        ("-5.00", "Enter an amount above zero."),
        ("1.005", "Use whole cents"),
        ("100.01", "Earned"),  # more than earned: the service's refusal, on the field
    ],
)
def test_a_bad_payout_amount_shows_a_field_error_and_changes_nothing(
    provider_client, amount, message
):
    client, membership = provider_client

    response = client.post("/payouts/", {"amount": amount, "idempotency_key": _key()})

    assert response.status_code == 200
    errors = response.context["payout_form"].errors
    assert list(errors) == ["amount"]
    assert message in " ".join(errors["amount"])
    assert message in response.content.decode()
    assert Payout.objects.count() == 0
    assert _payout_balances(membership.org_id) == (EARNINGS, 0)


def test_a_payout_before_stripe_enables_the_account_shows_why(member_client):
    client, membership = member_client(role=Role.ADMIN, org=_provider_org())
    PayoutAccount.objects.create(
        org=membership.org,
        stripe_account_id="acct_unfinished",
        onboarding_status=PayoutAccount.Onboarding.PENDING,
    )
    _earn(membership.org_id, EARNINGS)

    page = client.get("/payouts/").content.decode()
    response = client.post("/payouts/", {"amount": "10.00", "idempotency_key": _key()})

    assert "Payouts open once Stripe enables your payout account" in page
    assert response.status_code == 200
    assert "Finish the onboarding on Stripe first" in " ".join(
        response.context["payout_form"].non_field_errors()
    )
    assert Payout.objects.count() == 0
    assert _payout_balances(membership.org_id) == (EARNINGS, 0)


@pytest.mark.parametrize("role", [Role.VIEWER, Role.TRADER])
def test_a_member_without_the_payouts_scope_sees_but_cannot_submit(member_client, role):
    client, membership = member_client(role=role, org=_provider_org())
    PayoutAccount.objects.create(
        org=membership.org,
        stripe_account_id="acct_test_2",
        onboarding_status=PayoutAccount.Onboarding.ENABLED,
    )
    _earn(membership.org_id, EARNINGS)

    page = client.get("/payouts/")
    payout = client.post("/payouts/", {"amount": "10.00", "idempotency_key": _key()})
    connect = client.post("/payouts/account/", {"payout_minimum": "5.00", "schedule": "daily"})

    html = page.content.decode()
    assert page.status_code == 200
    assert money_display(EARNINGS) in html
    assert "can see payouts but not request them" in html
    assert 'data-testid="payout-form"' not in html
    assert 'data-testid="payout-account-form"' not in html
    assert payout.status_code == 403 and connect.status_code == 403
    assert Payout.objects.count() == 0
    assert _payout_balances(membership.org_id) == (EARNINGS, 0)
    account = PayoutAccount.objects.get(org=membership.org)
    assert (account.payout_minimum_micro, account.schedule) == (0, PayoutAccount.Schedule.MANUAL)


def test_connecting_saves_the_terms_and_sends_the_member_to_stripe(member_client, gateway):
    client, membership = member_client(role=Role.OWNER, org=_provider_org())

    page = client.get("/payouts/").content.decode()
    response = client.post("/payouts/account/", {"payout_minimum": "50.00", "schedule": "weekly"})

    assert "Not connected" in page and "Connect with Stripe" in page
    assert response.status_code == 302
    assert response["Location"] == "https://connect.stripe.test/setup/1"
    account = PayoutAccount.objects.get(org=membership.org)
    assert account.stripe_account_id == "acct_portal_1"
    assert account.onboarding_status == PayoutAccount.Onboarding.PENDING
    assert (account.payout_minimum_micro, account.schedule) == (50_000_000, "weekly")
    assert gateway.accounts[0]["email"] == membership.user.email
    assert gateway.links[0]["return_url"].endswith("/payouts/?stripe=return")
    assert gateway.links[0]["refresh_url"].endswith("/payouts/?stripe=refresh")


def test_an_enabled_account_saves_its_terms_and_stays_here(provider_client, gateway):
    client, membership = provider_client

    response = client.post("/payouts/account/", {"payout_minimum": "", "schedule": "monthly"})

    assert response.status_code == 302 and response["Location"] == "/payouts/"
    account = PayoutAccount.objects.get(org=membership.org)
    assert (account.payout_minimum_micro, account.schedule) == (0, "monthly")
    assert gateway.accounts == []  # connected already: no second Stripe account


def test_a_bad_minimum_shows_a_field_error_and_changes_nothing(provider_client, gateway):
    client, membership = provider_client

    response = client.post("/payouts/account/", {"payout_minimum": "-1", "schedule": "daily"})

    assert response.status_code == 200
    assert list(response.context["account_form"].errors) == ["payout_minimum"]
    account = PayoutAccount.objects.get(org=membership.org)
    assert account.schedule == PayoutAccount.Schedule.MANUAL
    assert gateway.links == []


# Withdrawals


@pytest.fixture
def buyer_client(member_client, fund):
    client, membership = member_client(role=Role.OWNER, org=OrgFactory(name="Acme Buyer"))
    fund(membership.org_id, FUNDS)
    return client, membership


def _withdrawal_balances(org_id: int) -> tuple[int, int]:
    return (
        account_balance(org_id=org_id, kind=Kind.AVAILABLE),
        account_balance(org_id=org_id, kind=Kind.HELD),
    )


def test_a_withdrawal_without_a_card_top_up_shows_the_services_error(buyer_client):
    client, membership = buyer_client

    response = client.post(
        "/withdrawals/",
        {"amount": "10.00", "idempotency_key": _key()},
    )

    assert response.status_code == 200
    errors = response.context["form"].errors
    assert errors["amount"] == ["At most $0.00 can be refunded to the cards that paid it."]
    assert "At most $0.00 can be refunded" in response.content.decode()
    assert Withdrawal.objects.count() == 0
    assert _withdrawal_balances(membership.org_id) == (FUNDS, 0)
    assert ledger_check() == []


def _paid_topup(org, amount_micro: int) -> TopUp:
    """A card top-up Stripe confirmed, credited to available as the verified webhook does."""
    topup = TopUp.objects.create(
        org=org,
        amount_micro=amount_micro,
        method=TopUp.Method.PAYMENT_INTENT,
        status=TopUp.Status.SUCCEEDED,
        idempotency_key=f"topup-{org.id}",
        request_fingerprint="f",
        stripe_payment_intent_id=f"pi_portal_{org.id}",
        succeeded_at=timezone.now(),
    )
    with transaction.atomic():
        ledger_post(
            kind=LedgerTransaction.Kind.TOPUP,
            postings=transfer(
                platform_account(kind=Kind.STRIPE_CLEARING),
                org_account(org_id=org.id, kind=Kind.AVAILABLE),
                amount_micro,
            ),
            reference=topup.ledger_reference,
        )
    return topup


def test_a_withdrawal_holds_the_amount_and_lists_its_refunds(
    member_client, gateway, django_capture_on_commit_callbacks
):
    client, membership = member_client(role=Role.OWNER, org=OrgFactory(name="Acme Buyer"))
    topup = _paid_topup(membership.org, FUNDS)
    fields = {"amount": "30.00", "idempotency_key": _key()}

    with django_capture_on_commit_callbacks(execute=False) as queued:
        first = client.post("/withdrawals/", fields)
        second = client.post("/withdrawals/", fields)

    assert first.status_code == second.status_code == 302
    withdrawal = Withdrawal.objects.get()
    assert (withdrawal.amount_micro, withdrawal.status) == (30_000_000, Withdrawal.Status.PENDING)
    (refund,) = withdrawal.refunds.all()
    assert (refund.topup_id, refund.amount_micro) == (topup.id, 30_000_000)
    assert _withdrawal_balances(membership.org_id) == (70_000_000, 30_000_000)
    assert len(queued) == 1 and gateway.refunds == []
    page = client.get("/withdrawals/").content.decode()
    assert f'data-withdrawal="{withdrawal.id}"' in page
    assert f"top-up #{topup.id}" in page and "$30.00" in page
    assert ledger_check() == []


@pytest.mark.parametrize(
    ("amount", "message"),
    [("", "This field is required."), ("2.5.0", "Enter an amount"), ("100.01", "Available")],
)
def test_a_bad_withdrawal_amount_shows_a_field_error_and_changes_nothing(
    buyer_client, amount, message
):
    client, membership = buyer_client

    response = client.post(
        "/withdrawals/",
        {"amount": amount, "idempotency_key": _key()},
    )

    assert response.status_code == 200
    assert message.lower() in " ".join(response.context["form"].errors["amount"]).lower()
    assert Withdrawal.objects.count() == 0
    assert _withdrawal_balances(membership.org_id) == (FUNDS, 0)


def test_a_viewer_sees_withdrawals_but_cannot_withdraw(member_client, fund):
    org = OrgFactory()
    client, membership = member_client(role=Role.VIEWER, org=org)
    fund(org.id, FUNDS)

    page = client.get("/withdrawals/")
    response = client.post(
        "/withdrawals/",
        {"amount": "5.00", "idempotency_key": _key()},
    )

    html = page.content.decode()
    assert page.status_code == 200 and money_display(FUNDS) in html
    assert "can see withdrawals but not make them" in html
    assert 'data-testid="withdrawal-form"' not in html
    assert response.status_code == 403
    assert Withdrawal.objects.count() == 0
    assert _withdrawal_balances(membership.org_id) == (FUNDS, 0)
