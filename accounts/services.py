"""Writes for accounts: sign-up, orgs, memberships, API keys."""

import secrets
from datetime import datetime

from django.db import IntegrityError, transaction
from django.utils import timezone
from django.utils.text import slugify

from accounts.errors import ApiKeyNotFound, EmailTaken, InvalidScope, NotAMember, ScopeNotAllowed
from accounts.keys import key_digest, key_generate
from accounts.models import ALL_SCOPES, ApiKey, Membership, Org, Role, Scope, User
from accounts.principal import Principal
from core.errors import PermissionDenied, ValidationFailed

KEY_MANAGERS_ONLY = (
    "Only an org's admins and owners manage API keys, and never with a read-only key."
)


def _unique_slug(name: str) -> str:
    base = slugify(name)[:120] or "org"
    slug = base
    while Org.objects.filter(slug=slug).exists():
        slug = f"{base}-{secrets.token_hex(3)}"
    return slug


def org_create(*, owner: User, name: str, is_buyer: bool, is_provider: bool) -> Org:
    """Create an org with `owner` as its owner. Runs inside the caller's transaction."""
    if not (is_buyer or is_provider):
        raise ValidationFailed(
            "An org buys, sells or both.", fields={"is_buyer": ["Choose buyer, provider or both."]}
        )
    org = Org.objects.create(
        name=name.strip(), slug=_unique_slug(name), is_buyer=is_buyer, is_provider=is_provider
    )
    Membership.objects.create(user=owner, org=org, role=Role.OWNER)
    return org


@transaction.atomic(durable=True)
def user_signup(
    *, email: str, password: str, org_name: str, is_buyer: bool = True, is_provider: bool = False
) -> tuple[User, Org]:
    """Create a user and their first org, with the user as owner, in one transaction."""
    email = email.strip().lower()
    if User.objects.filter(email=email).exists():
        raise EmailTaken()
    try:
        with transaction.atomic():
            user = User.objects.create_user(email=email, password=password)
    except IntegrityError:  # a concurrent sign-up with the same email won the race
        raise EmailTaken() from None
    org = org_create(owner=user, name=org_name, is_buyer=is_buyer, is_provider=is_provider)
    return user, org


@transaction.atomic(durable=True)
def membership_add(*, org: Org, actor: Principal, user: User, role: str) -> Membership:
    """Add `user` to `org` with `role`; only owners add members, and nobody adds a second owner."""
    if actor.org.id != org.id or actor.membership.role != Role.OWNER:
        raise PermissionDenied("Only the org's owner adds members.")
    if role not in Role.values:
        raise ValidationFailed(fields={"role": [f"Choose one of {', '.join(Role.values)}."]})
    membership, _ = Membership.objects.update_or_create(user=user, org=org, defaults={"role": role})
    return membership


def membership_for_user(*, user: User, org_id: int) -> Membership:
    membership = Membership.objects.select_related("org").filter(user=user, org_id=org_id).first()
    if membership is None:
        raise NotAMember()
    return membership


def key_management_allowed(*, principal: Principal) -> bool:
    """Whether the principal may create and revoke its org's API keys (admins and owners)."""
    if principal.api_key is not None and not principal.scopes - {Scope.READ}:
        # A read-only key stays read-only. If it could mint keys, whoever leaked it could make a
        # fresh one before the revocation and so outlive it.
        return False
    return principal.can_manage_keys


@transaction.atomic(durable=True)
def api_key_create(
    *, principal: Principal, name: str, scopes: list[str], expires_at: datetime | None = None
) -> tuple[ApiKey, str]:
    """Create an API key for the principal's org; returns the key and its secret (shown once).

    A key acts with its creator's role, so it may hold only scopes that role has, and a key that
    creates keys can't hand out scopes it does not hold itself.
    """
    if not key_management_allowed(principal=principal):
        raise PermissionDenied(KEY_MANAGERS_ONLY)
    wanted = set(scopes)
    unknown = wanted - ALL_SCOPES
    if unknown:
        raise InvalidScope(fields={"scopes": [f"Unknown scope: {', '.join(sorted(unknown))}."]})
    if not wanted:
        raise ValidationFailed(fields={"scopes": ["Choose at least one scope."]})
    if not wanted <= principal.scopes:
        raise ScopeNotAllowed(
            fields={
                "scopes": [f"Not yours to grant: {', '.join(sorted(wanted - principal.scopes))}."]
            }
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ValidationFailed(fields={"expires_at": ["Must be in the future."]})
    prefix, full_key = key_generate()
    api_key = ApiKey.objects.create(
        org=principal.org,
        created_by=principal.user,
        name=name.strip(),
        prefix=prefix,
        secret_sha256=key_digest(full_key),
        scopes=sorted(wanted),
        expires_at=expires_at,
    )
    return api_key, full_key


@transaction.atomic(durable=True)
def api_key_revoke(*, principal: Principal, api_key_id: int) -> ApiKey:
    """Revoke one of the principal's org's keys; other orgs' keys do not exist for the caller."""
    api_key = ApiKey.objects.select_for_update().filter(pk=api_key_id, org=principal.org).first()
    if api_key is None:
        raise ApiKeyNotFound()
    if not key_management_allowed(principal=principal):
        raise PermissionDenied(KEY_MANAGERS_ONLY)
    if api_key.revoked_at is None:
        api_key.revoked_at = timezone.now()
        api_key.save(update_fields=["revoked_at"])
    return api_key
