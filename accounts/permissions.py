"""Permission for API views: the caller acts for an org and holds the scope the view declares.

Every API view sets `required_scope` (a Scope value), or opts out with its own permission_classes.
A view that forgets to declare one is refused rather than left open.
"""

from rest_framework import permissions

from accounts.principal import Principal
from accounts.services import KEY_MANAGERS_ONLY, key_management_allowed


class IsOrgMember(permissions.BasePermission):
    message = "Your API key or role does not allow this."

    def has_permission(self, request, view) -> bool:
        principal = request.auth
        if not isinstance(principal, Principal):
            return False
        required = getattr(view, "required_scope", None)
        if required is None:
            return False
        if required == "manage_keys":
            self.message = KEY_MANAGERS_ONLY
            return key_management_allowed(principal=principal)
        return principal.has_scope(required)
