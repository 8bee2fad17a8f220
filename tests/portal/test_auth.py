import re

import pytest
from django.core import mail
from django.test import Client

from accounts.middleware import ACTIVE_ORG_SESSION_KEY
from accounts.models import Membership, Org, Role, User
from tests.accounts.factories import UserFactory

pytestmark = pytest.mark.django_db

GOOD_PASSWORD = "plum-orbit-canvas-42"


def _signup(client: Client, **overrides):
    data = {
        "email": "ada@example.test",
        "password1": GOOD_PASSWORD,
        "password2": GOOD_PASSWORD,
        "org_name": "Analytical Engines",
        "is_buyer": "on",
    }
    data.update(overrides)
    return client.post("/signup/", {k: v for k, v in data.items() if v is not None})


def test_signup_creates_user_org_and_owner_membership_and_signs_in(client):
    response = _signup(client, is_provider="on")

    assert response.status_code == 302
    assert response.url == "/"
    user = User.objects.get(email="ada@example.test")
    membership = Membership.objects.select_related("org").get(user=user)
    assert membership.role == Role.OWNER
    assert membership.org.name == "Analytical Engines"
    assert (membership.org.is_buyer, membership.org.is_provider) == (True, True)
    assert client.session["_auth_user_id"] == str(user.pk)
    assert client.session[ACTIVE_ORG_SESSION_KEY] == membership.org_id
    dashboard = client.get("/")
    assert dashboard.status_code == 200
    assert "Analytical Engines" in dashboard.content.decode()


def test_signup_page_lists_every_field(client):
    html = client.get("/signup/").content.decode()

    for name in ["email", "password1", "password2", "org_name", "is_buyer", "is_provider"]:
        assert f'name="{name}"' in html


def test_signup_refuses_a_bad_email(client):
    response = _signup(client, email="not-an-email")

    assert response.status_code == 200
    assert "Enter a valid email address." in response.content.decode()
    assert not User.objects.exists()


def test_signup_refuses_a_weak_password(client):
    response = _signup(client, password1="12345678", password2="12345678")

    html = response.content.decode()
    assert "This password is too common." in html
    assert "This password is entirely numeric." in html
    assert not User.objects.exists()


def test_signup_refuses_a_password_like_the_email(client):
    response = _signup(client, password1="ada@example", password2="ada@example")

    assert "The password is too similar to the email" in response.content.decode()
    assert not User.objects.exists()


def test_signup_refuses_passwords_that_differ(client):
    response = _signup(client, password2=GOOD_PASSWORD + "x")

    assert "The two passwords differ." in response.content.decode()
    assert not User.objects.exists()


def test_signup_refuses_a_taken_email_in_any_case(client):
    UserFactory(email="ada@example.test")

    response = _signup(client, email="ADA@example.test")

    assert response.status_code == 200
    assert "An account with this email already exists." in response.content.decode()
    assert User.objects.count() == 1
    assert not Org.objects.exists()


def test_signup_refuses_an_org_that_neither_buys_nor_sells(client):
    response = _signup(client, is_buyer=None)

    assert response.status_code == 200
    assert "Choose buyer, provider or both." in response.content.decode()
    # The service's transaction rolled the user back with the org.
    assert not User.objects.exists()
    assert not Org.objects.exists()


def test_signed_in_user_is_sent_from_signup_to_the_dashboard(member_client):
    client, _ = member_client()

    assert client.get("/signup/").url == "/"


def test_login_with_email_and_password_opens_the_dashboard(client):
    UserFactory(email="grace@example.test")

    response = client.post(
        "/login/", {"username": "Grace@Example.test", "password": "correct horse battery"}
    )

    assert response.status_code == 302
    assert response.url == "/"
    assert client.session["_auth_user_id"] == str(User.objects.get().pk)


def test_login_with_a_wrong_password_shows_an_error(client):
    UserFactory(email="grace@example.test")

    response = client.post("/login/", {"username": "grace@example.test", "password": "nope"})

    assert response.status_code == 200
    assert "Please enter a correct email and password" in response.content.decode()
    assert "_auth_user_id" not in client.session


def test_anonymous_visitor_is_sent_to_login(client):
    response = client.get("/topups/new/")

    assert response.status_code == 302
    assert response.url == "/login/?next=/topups/new/"


def test_logout_signs_out_on_post(member_client):
    client, _ = member_client()

    response = client.post("/logout/")

    assert response.status_code == 302
    assert response.url == "/login/"
    assert "_auth_user_id" not in client.session
    assert client.get("/").status_code == 302


def test_logout_refuses_get(member_client):
    client, _ = member_client()

    assert client.get("/logout/").status_code == 405
    assert "_auth_user_id" in client.session


def test_password_reset_emails_a_link_that_sets_a_new_password(client):
    user = UserFactory(email="grace@example.test")

    response = client.post("/password/reset/", {"email": "grace@example.test"})

    assert response.status_code == 302
    assert response.url == "/password/reset/sent/"
    assert len(mail.outbox) == 1
    message = mail.outbox[0]
    assert message.to == ["grace@example.test"]
    assert message.subject == "Reset your Token Exchange password"
    link = re.search(r"http://testserver(/password/reset/\S+/)", message.body).group(1)
    form_url = client.get(link).url  # Django swaps the token for a session marker
    new_password = "quartz-meadow-lantern-7"
    done = client.post(form_url, {"new_password1": new_password, "new_password2": new_password})
    assert done.url == "/password/reset/complete/"
    user.refresh_from_db()
    assert user.check_password(new_password)


def test_password_reset_for_an_unknown_email_sends_nothing(client):
    response = client.post("/password/reset/", {"email": "nobody@example.test"})

    assert response.url == "/password/reset/sent/"  # same answer: no account enumeration
    assert mail.outbox == []


def test_password_change_needs_the_old_password(member_client):
    client, membership = member_client()
    new_password = "quartz-meadow-lantern-7"

    wrong = client.post(
        "/password/change/",
        {"old_password": "wrong", "new_password1": new_password, "new_password2": new_password},
    )
    right = client.post(
        "/password/change/",
        {
            "old_password": "correct horse battery",
            "new_password1": new_password,
            "new_password2": new_password,
        },
    )

    assert wrong.status_code == 200
    assert right.url == "/password/change/done/"
    membership.user.refresh_from_db()
    assert membership.user.check_password(new_password)
