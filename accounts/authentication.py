"""How the REST API knows who is calling.

Programs send `Authorization: Bearer txk_…`. People signed in to the portal may also call the API
from the browser; their session's active org decides the org, and CSRF applies as usual.
Both hand the view a Principal as `request.auth`.
"""

from datetime import timedelta

from django.db.models import OuterRef, Q, Subquery
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.keys import key_matches, key_parse
from accounts.models import ApiKey, Membership
from accounts.principal import Principal

# Recording last use on every request would turn each read into a write; once a minute is enough
# to answer "is this key still in use?".
LAST_USED_RESOLUTION = timedelta(seconds=60)


class ApiKeyAuthentication(authentication.BaseAuthentication):
    keyword = "Bearer"

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).decode("latin-1")
        if not header:
            return None
        keyword, _, raw_key = header.partition(" ")
        if keyword != self.keyword:
            return None
        parsed = key_parse(raw_key.strip())
        if parsed is None:
            raise exceptions.AuthenticationFailed("Malformed API key.")
        api_key = self._key_with_membership(parsed.prefix)
        if api_key is None or not key_matches(parsed.full_key, api_key.secret_sha256):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        now = timezone.now()
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if api_key.expires_at is not None and api_key.expires_at <= now:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        if api_key.membership_id is None:
            raise exceptions.AuthenticationFailed(
                "The member who created this API key no longer belongs to the org."
            )
        membership = Membership(
            id=api_key.membership_id,
            org=api_key.org,
            user=api_key.created_by,
            role=api_key.membership_role,
            created_at=api_key.membership_created_at,
        )
        membership._state.adding = False
        membership._state.db = api_key._state.db
        last_used_at = api_key.last_used_at
        if last_used_at is None or last_used_at < now - LAST_USED_RESOLUTION:
            # Conditional, so concurrent requests on one key write it once between them.
            ApiKey.objects.filter(pk=api_key.pk).filter(
                Q(last_used_at__isnull=True) | Q(last_used_at__lt=now - LAST_USED_RESOLUTION)
            ).update(last_used_at=now)
            api_key.last_used_at = now
        principal = Principal(
            org=membership.org,
            user=membership.user,
            membership=membership,
            scopes=frozenset(api_key.scopes) & membership.scopes,
            api_key=api_key,
        )
        return membership.user, principal

    @staticmethod
    def _key_with_membership(prefix: str) -> ApiKey | None:
        """The key, its org and creator, and the creator's active membership, in one query.

        Every API request runs this, so the membership comes as columns of the same row rather
        than from a second query; `membership_id` is None when the creator has left the org or
        was deactivated.
        """
        memberships = Membership.objects.filter(
            org_id=OuterRef("org_id"), user_id=OuterRef("created_by_id"), user__is_active=True
        )
        return (
            ApiKey.objects.select_related("org", "created_by")
            .annotate(
                membership_id=Subquery(memberships.values("id")[:1]),
                membership_role=Subquery(memberships.values("role")[:1]),
                membership_created_at=Subquery(memberships.values("created_at")[:1]),
            )
            .filter(prefix=prefix)
            .first()
        )

    def authenticate_header(self, request) -> str:
        return 'Bearer realm="api"'


class PortalSessionAuthentication(authentication.SessionAuthentication):
    def authenticate(self, request):
        result = super().authenticate(request)
        if result is None:
            return None
        membership = getattr(request._request, "active_membership", None)
        if membership is None:
            raise exceptions.AuthenticationFailed("Your account does not belong to an org yet.")
        return result[0], Principal.for_membership(membership)


class ApiKeyAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.ApiKeyAuthentication"
    name = "ApiKey"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "description": "An API key created in the portal or the API: `txk_<prefix>_<secret>`.",
        }


class PortalSessionAuthenticationScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.PortalSessionAuthentication"
    name = "PortalSession"

    def get_security_definition(self, auto_schema):
        return {"type": "apiKey", "in": "cookie", "name": "sessionid"}
