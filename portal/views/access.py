"""Who may see a portal page and act on it: the checks every portal view shares.

Roles are checked in the view, not only by hiding a form: a viewer who posts anyway is refused.
"""

from functools import wraps

from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect, render

from accounts.models import Scope
from accounts.principal import Principal


def member_required(view):
    """Signed in and acting for an org; someone with no org yet is sent to create one."""

    @login_required
    @wraps(view)
    def wrapper(request, *args, **kwargs):
        if request.active_membership is None:
            return redirect("portal:org-create")
        return view(request, *args, **kwargs)

    return wrapper


def refuse(request, message: str):
    return render(request, "portal/forbidden.html", {"message": message}, status=403)


def principal_for(request) -> Principal:
    return Principal.for_membership(request.active_membership)


def may_trade(request) -> bool:
    """Whether the member's role places and cancels orders (viewers only look)."""
    return principal_for(request).has_scope(Scope.TRADE)


def is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true"
