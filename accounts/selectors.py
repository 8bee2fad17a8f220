"""Reads for accounts."""

from django.db.models import QuerySet

from accounts.errors import ApiKeyNotFound
from accounts.models import ApiKey, Membership, Org, User


def api_key_list(*, org: Org) -> QuerySet[ApiKey]:
    return ApiKey.objects.filter(org=org).order_by("-created_at", "-id")


def api_key_get(*, org: Org, api_key_id: int) -> ApiKey:
    api_key = ApiKey.objects.filter(org=org, pk=api_key_id).first()
    if api_key is None:
        raise ApiKeyNotFound()
    return api_key


def membership_list_for_user(*, user: User) -> QuerySet[Membership]:
    return Membership.objects.select_related("org").filter(user=user).order_by("org__name")
