import pytest
from django.test import Client

from accounts.middleware import ACTIVE_ORG_SESSION_KEY
from accounts.models import Membership, Org, Role
from tests.accounts.factories import MembershipFactory, OrgFactory, UserFactory

pytestmark = pytest.mark.django_db


def test_switcher_lists_every_org_of_the_user(member_client):
    client, membership = member_client()
    other = MembershipFactory(user=membership.user, org__name="Second Org", role=Role.VIEWER)

    html = client.get("/").content.decode()

    assert f'name="org_id" value="{membership.org_id}"' in html
    assert f'name="org_id" value="{other.org_id}"' in html
    assert "Second Org" in html


def test_switching_org_changes_the_active_org(member_client):
    client, membership = member_client()
    other = MembershipFactory(user=membership.user, org__name="Second Org", role=Role.VIEWER)

    response = client.post("/orgs/switch/", {"org_id": other.org_id})

    assert response.status_code == 302
    assert client.session[ACTIVE_ORG_SESSION_KEY] == other.org_id
    page = client.get("/")
    assert page.wsgi_request.active_membership == other
    assert "You are now acting for Second Org." in page.content.decode()


def test_switching_to_an_org_you_do_not_belong_to_is_refused(member_client):
    client, membership = member_client()
    client.post("/orgs/switch/", {"org_id": membership.org_id})
    stranger_org = OrgFactory(name="Not Yours")

    response = client.post("/orgs/switch/", {"org_id": stranger_org.id})

    assert response.status_code == 403
    assert "You are not a member of this org." in response.content.decode()
    assert client.session[ACTIVE_ORG_SESSION_KEY] == membership.org_id
    assert client.get("/").wsgi_request.active_membership == membership


def test_switching_needs_post(member_client):
    client, membership = member_client()

    assert client.get("/orgs/switch/", {"org_id": membership.org_id}).status_code == 405


def test_user_without_an_org_is_sent_to_create_one():
    client = Client()
    client.force_login(UserFactory())

    response = client.get("/")

    assert response.status_code == 302
    assert response.url == "/orgs/new/"
    assert "not a member of any organisation" in client.get("/orgs/new/").content.decode()


def test_creating_an_org_makes_the_user_its_owner_and_activates_it():
    user = UserFactory()
    client = Client()
    client.force_login(user)

    response = client.post("/orgs/new/", {"name": "Fresh Start", "is_provider": "on"})

    assert response.status_code == 302
    assert response.url == "/"
    membership = Membership.objects.select_related("org").get(user=user)
    assert membership.role == Role.OWNER
    assert (membership.org.is_buyer, membership.org.is_provider) == (False, True)
    assert client.session[ACTIVE_ORG_SESSION_KEY] == membership.org_id


def test_creating_an_org_that_neither_buys_nor_sells_is_refused():
    user = UserFactory()
    client = Client()
    client.force_login(user)

    response = client.post("/orgs/new/", {"name": "Idle"})

    assert response.status_code == 200
    assert "Choose buyer, provider or both." in response.content.decode()
    assert not Org.objects.exists()
