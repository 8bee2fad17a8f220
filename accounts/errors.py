from core.errors import ApplicationError, Conflict, NotFound, PermissionDenied


class EmailTaken(Conflict):
    code = "email_taken"
    default_message = "An account with this email already exists."


class ApiKeyNotFound(NotFound):
    code = "api_key_not_found"
    default_message = "No such API key."


class ScopeNotAllowed(PermissionDenied):
    code = "scope_not_allowed"
    default_message = "You cannot grant a scope you do not hold yourself."


class InvalidScope(ApplicationError):
    code = "invalid_scope"
    default_message = "Unknown scope."


class NotAMember(PermissionDenied):
    code = "not_a_member"
    default_message = "You are not a member of this org."
