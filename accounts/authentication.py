"""How the REST API knows who is calling.

Programs send `Authorization: Bearer txk_…`. People signed in to the portal may also call the API
from the browser; their session's active org decides the org, and CSRF applies as usual.
Both hand the view a Principal as `request.auth`.
"""

from datetime import timedelta

from django.db import connection
from django.db.models import Q
from django.utils import timezone
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from rest_framework import authentication, exceptions

from accounts.keys import key_matches, key_parse
from accounts.models import ApiKey, Membership, Org, User
from accounts.principal import Principal
from core.rows import ModelColumns, instances, select_list

# Recording last use on every request would turn each read into a write; once a minute is enough
# to answer "is this key still in use?".
LAST_USED_RESOLUTION = timedelta(seconds=60)

_KEY_PARTS = (
    ModelColumns(ApiKey, "k"),
    ModelColumns(Org, "o"),
    ModelColumns(User, "u"),
    ModelColumns(Membership, "m"),
)
_KEY_LOOKUP_SQL: dict[str, str] = {}  # by database vendor


def _key_lookup_sql(connection) -> str:
    """The key by prefix, its org and creator, and the creator's membership if still active.

    (user, org) is unique in memberships, so the left join gives one row at most.
    """
    sql = _KEY_LOOKUP_SQL.get(connection.vendor)
    if sql is None:
        table = connection.ops.quote_name
        columns = select_list(_KEY_PARTS, connection)
        sql = _KEY_LOOKUP_SQL[connection.vendor] = (
            f"SELECT {columns}"  # noqa: S608 (table names from our models; the prefix is a parameter)
            f" FROM {table(ApiKey._meta.db_table)} AS k"
            f" JOIN {table(Org._meta.db_table)} AS o ON o.id = k.org_id"
            f" JOIN {table(User._meta.db_table)} AS u ON u.id = k.created_by_id"
            f" LEFT JOIN {table(Membership._meta.db_table)} AS m"
            "  ON m.org_id = k.org_id AND m.user_id = k.created_by_id AND u.is_active"
            " WHERE k.prefix = %s"
        )
    return sql


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
        found = self._key_with_membership(parsed.prefix)
        if found is None or not key_matches(parsed.full_key, found[0].secret_sha256):
            raise exceptions.AuthenticationFailed("Invalid API key.")
        api_key, membership = found
        now = timezone.now()
        if api_key.revoked_at is not None:
            raise exceptions.AuthenticationFailed("This API key has been revoked.")
        if api_key.expires_at is not None and api_key.expires_at <= now:
            raise exceptions.AuthenticationFailed("This API key has expired.")
        if membership is None:
            raise exceptions.AuthenticationFailed(
                "The member who created this API key no longer belongs to the org."
            )
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
    def _key_with_membership(prefix: str) -> tuple[ApiKey, Membership | None] | None:
        """The key with its org and creator, and the creator's active membership: one query.

        Every API request runs this, so it is written once as SQL (core.rows) instead of being
        compiled by the ORM each time, which cost more than the query. The membership is None
        when the creator has left the org or was deactivated.
        """
        with connection.cursor() as cursor:
            cursor.execute(_key_lookup_sql(connection), [prefix])
            row = cursor.fetchone()
        if row is None:
            return None
        api_key, api_key.org, api_key.created_by, membership = instances(
            row, _KEY_PARTS, connection
        )
        if membership is not None:
            membership.org, membership.user = api_key.org, api_key.created_by
        return api_key, membership

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
