"""The accounts admin: orgs, members, users by email, and API keys that staff can only revoke."""

import pytest
from django.contrib import admin as django_admin
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth.models import Permission
from django.urls import reverse
from rest_framework.test import APIClient

from accounts.models import ApiKey, Membership, Org, Role, User
from accounts.services import api_key_create
from tests.accounts.factories import MembershipFactory, UserFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin(client, staff):
    client.force_login(staff)
    return client


@pytest.fixture
def api_key(buyer) -> tuple[ApiKey, str]:
    return api_key_create(principal=buyer, name="ci deploy key", scopes=["read", "trade"])


def _url(model, view: str, *args) -> str:
    opts = model._meta
    return reverse(f"admin:{opts.app_label}_{opts.model_name}_{view}", args=args)


def _html(response) -> str:
    assert response.status_code == 200, response.status_code
    return response.content.decode()


# Pages


@pytest.mark.parametrize("model", [Org, Membership, User, ApiKey], ids=lambda m: m.__name__)
def test_the_list_and_detail_pages_load(admin, buyer, api_key, model):
    obj = model.objects.order_by("id").first()

    assert admin.get(_url(model, "changelist")).status_code == 200
    assert admin.get(_url(model, "change", obj.pk)).status_code == 200


@pytest.mark.parametrize("model", [Org, Membership, User], ids=lambda m: m.__name__)
def test_the_add_pages_load(admin, model):
    assert admin.get(_url(model, "add")).status_code == 200


def test_the_org_page_shows_its_members_roles_and_keys(admin, buyer, api_key):
    MembershipFactory(org=buyer.org, role=Role.VIEWER, user__email="viewer@acme.test")

    page = _html(admin.get(_url(Org, "change", buyer.org.pk)))

    assert buyer.user.email in page
    assert "viewer@acme.test" in page
    assert api_key[0].prefix in page
    assert "ci deploy key" in page


def test_the_org_list_shows_whether_it_buys_or_sells(admin, buyer, provider):
    page = _html(admin.get(_url(Org, "changelist") + "?is_provider__exact=1"))

    assert provider.org.name in page
    assert buyer.org.name not in page


def test_staff_can_rename_an_org(admin, buyer):
    response = admin.post(
        _url(Org, "change", buyer.org.pk),
        {
            "name": "Acme Renamed",
            "slug": buyer.org.slug,
            "is_buyer": "on",
            "memberships-TOTAL_FORMS": "0",
            "memberships-INITIAL_FORMS": "0",
            "api_keys-TOTAL_FORMS": "0",
            "api_keys-INITIAL_FORMS": "0",
        },
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    buyer.org.refresh_from_db()
    assert buyer.org.name == "Acme Renamed"


# Users by email


def test_the_user_add_form_asks_for_an_email_not_a_username(admin):
    page = _html(admin.get(_url(User, "add")))

    assert 'name="email"' in page
    assert 'name="username"' not in page


def test_staff_add_a_user_by_email(admin):
    response = admin.post(
        _url(User, "add"),
        {
            "email": "New.Operator@Exchange.test",
            "usable_password": "true",
            "password1": "a long enough passphrase 42",
            "password2": "a long enough passphrase 42",
        },
    )

    assert response.status_code == 302, response.context["adminform"].form.errors
    user = User.objects.get(email="new.operator@exchange.test")
    assert user.check_password("a long enough passphrase 42")
    assert not user.is_staff


def test_an_email_taken_in_another_case_is_refused(admin):
    UserFactory(email="taken@example.test")

    response = admin.post(
        _url(User, "add"),
        {
            "email": "TAKEN@example.test",
            "usable_password": "true",
            "password1": "a long enough passphrase 42",
            "password2": "a long enough passphrase 42",
        },
    )

    assert response.status_code == 200
    assert response.context["adminform"].form.errors["email"]
    assert User.objects.filter(email__iexact="taken@example.test").count() == 1


def test_the_user_page_shows_the_orgs_the_user_belongs_to(admin, buyer):
    page = _html(admin.get(_url(User, "change", buyer.user.pk)))

    assert buyer.user.email in page
    assert buyer.org.name in page


def test_someone_who_is_not_staff_is_sent_to_the_login(client, buyer):
    client.force_login(buyer.user)

    response = client.get(_url(Org, "changelist"))

    assert response.status_code == 302
    assert "/admin/login/" in response.url


# API keys


def _all_admin_pages(client) -> list[str]:
    """Every registered model's list and the detail page of each of its rows."""
    pages = []
    for model, model_admin in django_admin.site._registry.items():
        pages.append(_html(client.get(_url(model, "changelist"))))
        for obj in model_admin.get_queryset(None).order_by("pk")[:20]:
            pages.append(_html(client.get(_url(model, "change", obj.pk))))
    return pages


def test_the_key_digest_never_appears_in_any_admin_page(admin, buyer, api_key):
    key, secret = api_key
    api_key_create(principal=buyer, name="second", scopes=["read"])

    pages = _all_admin_pages(admin)
    pages.append(_html(admin.get(_url(ApiKey, "changelist") + f"?q={key.prefix}")))

    assert len(pages) > 20
    for page in pages:
        assert key.secret_sha256 not in page
        assert "secret_sha256" not in page
        assert secret not in page
    assert any(key.prefix in page for page in pages)


def test_api_keys_cannot_be_added_edited_or_deleted_in_the_admin(admin, api_key):
    key, _ = api_key

    assert admin.get(_url(ApiKey, "add")).status_code == 403
    assert admin.post(_url(ApiKey, "change", key.pk), {"name": "renamed"}).status_code == 403
    assert admin.post(_url(ApiKey, "delete", key.pk), {"post": "yes"}).status_code == 403
    key.refresh_from_db()
    assert key.name == "ci deploy key"


def _revoke(client, *keys):
    return client.post(
        _url(ApiKey, "changelist"),
        {"action": "revoke", "_selected_action": [k.pk for k in keys]},
        follow=True,
    )


def test_revoking_a_key_stops_it_working_and_is_logged(admin, staff, api_key):
    key, secret = api_key
    headers = {"HTTP_AUTHORIZATION": f"Bearer {secret}"}
    assert APIClient().get("/api/v1/me", **headers).status_code == 200

    response = _revoke(admin, key)

    assert "Revoked 1 API key(s)." in response.content.decode()
    key.refresh_from_db()
    assert key.status == "revoked"
    assert APIClient().get("/api/v1/me", **headers).status_code == 401
    log = LogEntry.objects.get()
    assert (log.user, log.object_id, log.action_flag) == (staff, str(key.pk), CHANGE)


def test_revoking_twice_keeps_the_first_revocation(admin, api_key):
    key, _ = api_key
    _revoke(admin, key)
    key.refresh_from_db()
    first = key.revoked_at

    response = _revoke(admin, key)

    key.refresh_from_db()
    assert key.revoked_at == first
    assert "Revoked 0 API key(s)." in response.content.decode()
    assert LogEntry.objects.count() == 1


def test_only_staff_with_the_change_permission_may_revoke(client, api_key):
    key, _ = api_key
    viewer = UserFactory(is_staff=True)
    viewer.user_permissions.set(Permission.objects.filter(codename="view_apikey"))
    client.force_login(viewer)

    page = _html(client.get(_url(ApiKey, "changelist")))
    _revoke(client, key)

    assert key.prefix in page
    assert 'value="revoke"' not in page
    key.refresh_from_db()
    assert key.revoked_at is None


def test_the_key_list_filters_by_status(admin, buyer, api_key):
    revoked, _ = api_key_create(principal=buyer, name="old key", scopes=["read"])
    _revoke(admin, revoked)

    page = _html(admin.get(_url(ApiKey, "changelist") + "?status=revoked"))

    assert revoked.prefix in page
    assert api_key[0].prefix not in page
