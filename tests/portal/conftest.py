"""Portal fixtures: signed-in test clients by role.

- `member_client(role=..., org=...)`: a Django test client signed in as a new member.
(`browser_page` and `chromium` come from tests/browser.py, through tests/conftest.py.)
"""

import pytest
from django.test import Client

from accounts.models import Membership, Org, Role
from tests.accounts.factories import MembershipFactory


@pytest.fixture
def member_client(db):
    def make(*, role: str = Role.OWNER, org: Org | None = None) -> tuple[Client, Membership]:
        membership = MembershipFactory(role=role, org=org) if org else MembershipFactory(role=role)
        client = Client()
        client.force_login(membership.user)
        return client, membership

    return make
