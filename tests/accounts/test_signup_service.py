"""user_signup: a new user owns a new org, made in one transaction; emails are unique."""

import threading

import pytest
from django.db import connection

from accounts.errors import EmailTaken
from accounts.models import Membership, Org, Role, User
from accounts.principal import Principal
from accounts.services import api_key_create, user_signup
from core.errors import ValidationFailed
from settlement.selectors import balances_for_org

pytestmark = pytest.mark.django_db


def test_signup_makes_the_user_the_owner_of_a_new_buyer_org():
    user, org = user_signup(email="ada@example.test", password="a long passphrase", org_name="Ada")
    membership = Membership.objects.get(user=user)
    assert (membership.org_id, membership.role) == (org.id, Role.OWNER)
    assert (org.name, org.is_buyer, org.is_provider) == ("Ada", True, False)
    assert user.check_password("a long passphrase")
    assert user.password != "a long passphrase"


def test_signup_normalises_the_email_to_lower_case():
    user, _ = user_signup(email="  Ada@Example.TEST ", password="pw-long-enough", org_name="Ada")
    assert user.email == "ada@example.test"


def test_signup_can_make_a_provider_org():
    _, org = user_signup(
        email="p@example.test",
        password="pw-long-enough",
        org_name="Fast GPUs",
        is_buyer=False,
        is_provider=True,
    )
    assert (org.is_buyer, org.is_provider) == (False, True)


def test_an_email_already_taken_in_any_case_is_refused_and_nothing_is_made():
    user_signup(email="ada@example.test", password="pw-long-enough", org_name="Ada")
    with pytest.raises(EmailTaken):
        user_signup(email="ADA@example.test", password="pw-long-enough", org_name="Ada Two")
    assert (User.objects.count(), Org.objects.count()) == (1, 1)


def test_an_org_that_neither_buys_nor_sells_is_refused_and_the_user_is_rolled_back():
    with pytest.raises(ValidationFailed) as raised:
        user_signup(
            email="ada@example.test",
            password="pw-long-enough",
            org_name="Ada",
            is_buyer=False,
            is_provider=False,
        )
    assert "is_buyer" in raised.value.fields
    assert not User.objects.filter(email="ada@example.test").exists()
    assert not Org.objects.exists()


def test_two_orgs_with_the_same_name_get_different_slugs():
    _, first = user_signup(email="a@example.test", password="pw-long-enough", org_name="Acme")
    _, second = user_signup(email="b@example.test", password="pw-long-enough", org_name="Acme")
    assert first.slug == "acme"
    assert second.slug.startswith("acme-") and second.slug != first.slug


def test_a_new_org_has_zero_usd_balances():
    _, org = user_signup(email="ada@example.test", password="pw-long-enough", org_name="Ada")
    [usd] = balances_for_org(org_id=org.id)
    assert (usd.currency, usd.total_micro, usd.available_micro) == ("USD", 0, 0)


def test_the_new_owner_may_create_a_key_with_every_scope():
    user, _ = user_signup(email="ada@example.test", password="pw-long-enough", org_name="Ada")
    principal = Principal.for_membership(Membership.objects.select_related("org").get(user=user))
    api_key, secret = api_key_create(
        principal=principal, name="all", scopes=["payouts", "read", "relay", "trade", "usage:write"]
    )
    assert secret.startswith(f"txk_{api_key.prefix}_")


@pytest.mark.postgres
@pytest.mark.django_db(transaction=True)
def test_two_racing_signups_with_one_email_make_one_user():
    barrier = threading.Barrier(4)
    outcomes: list[str] = []

    def sign_up(index: int) -> None:
        try:
            barrier.wait()
            user_signup(email="race@example.test", password="pw-long-enough", org_name=f"R{index}")
            outcomes.append("ok")
        except EmailTaken:
            outcomes.append("taken")
        finally:
            connection.close()

    threads = [threading.Thread(target=sign_up, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == ["ok", "taken", "taken", "taken"]
    assert User.objects.filter(email="race@example.test").count() == 1
    assert Org.objects.count() == 1
