"""Personas and shared fixtures.

- `buyer`, `provider`: an org with its owner, as a Principal.
- `staff`: an operator.
- `api_for(principal, scopes)`: a DRF test client authenticated with a fresh API key.
- `fund(org_id, amount_micro)`: credit an org's available balance the way a verified top-up does.
Tests marked `postgres` skip on SQLite, with the reason shown.
"""

import pytest
from django.db import connection, transaction
from rest_framework.test import APIClient

from accounts.models import ALL_SCOPES, Membership, Role
from accounts.principal import Principal
from config.celery import app as celery_app
from tests.accounts.factories import MembershipFactory, UserFactory

# Tests call tasks as functions, or let `delay_on_commit` run them inline at commit. Tests that are
# about the worker start a real one and switch this off for themselves.
celery_app.conf.task_always_eager = True
celery_app.conf.task_eager_propagates = True


def pytest_collection_modifyitems(config, items):
    if connection.vendor == "postgresql":
        return
    skip = pytest.mark.skip(reason="needs PostgreSQL (set DATABASE_URL); SQLite has one writer")
    for item in items:
        if "postgres" in item.keywords:
            item.add_marker(skip)


def _principal(membership: Membership) -> Principal:
    return Principal.for_membership(membership)


@pytest.fixture
def buyer(db) -> Principal:
    return _principal(MembershipFactory(org__name="Acme Buyer", role=Role.OWNER))


@pytest.fixture
def provider(db) -> Principal:
    return _principal(
        MembershipFactory(
            org__name="Fast Inference", org__is_buyer=False, org__is_provider=True, role=Role.OWNER
        )
    )


@pytest.fixture
def staff(db):
    return UserFactory(email="ops@exchange.test", is_staff=True, is_superuser=True)


@pytest.fixture
def api_for(db):
    from accounts.services import api_key_create

    def make(principal: Principal, scopes=None) -> APIClient:
        _, secret = api_key_create(
            principal=principal, name="test key", scopes=sorted(scopes or ALL_SCOPES)
        )
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
        return client

    return make


@pytest.fixture
def fund(db):
    from settlement.models import LedgerAccount, LedgerTransaction
    from settlement.services import ledger_post, org_account, platform_account, transfer

    def credit(org_id: int, amount_micro: int) -> None:
        with transaction.atomic():
            ledger_post(
                kind=LedgerTransaction.Kind.TRANSFER,
                postings=transfer(
                    platform_account(kind=LedgerAccount.Kind.STRIPE_CLEARING),
                    org_account(org_id=org_id, kind=LedgerAccount.Kind.AVAILABLE),
                    amount_micro,
                ),
                reference=f"test-funding:{org_id}",
            )

    return credit


from tests.browser import browser_page, chromium  # noqa: E402,F401 - fixtures
from tests.localstripe import localstripe, localstripe_api_base  # noqa: E402,F401 - fixtures
