def active_org(request) -> dict:
    """The signed-in user's active membership and org, for the layout's org switcher."""
    membership = getattr(request, "active_membership", None)
    return {"active_membership": membership, "active_org": membership.org if membership else None}
