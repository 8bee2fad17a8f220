from django.utils.functional import SimpleLazyObject

from accounts.selectors import membership_list_for_user


def active_org(request) -> dict:
    """The signed-in user's active membership and org, and all their orgs for the switcher."""
    membership = getattr(request, "active_membership", None)
    user = getattr(request, "user", None)
    signed_in = user is not None and user.is_authenticated
    return {
        "active_membership": membership,
        "active_org": membership.org if membership else None,
        # Lazy: the query runs only on pages that draw the switcher.
        "memberships": SimpleLazyObject(
            lambda: list(membership_list_for_user(user=user)) if signed_in else []
        ),
    }
