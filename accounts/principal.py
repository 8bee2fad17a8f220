"""The acting party of a request: which org, which member, and what they may do right now."""

from dataclasses import dataclass

from accounts.models import ApiKey, Membership, Org, User


@dataclass(frozen=True)
class Principal:
    org: Org
    user: User
    membership: Membership
    scopes: frozenset[str]
    api_key: ApiKey | None = None

    @property
    def via(self) -> str:
        return "api_key" if self.api_key is not None else "session"

    @property
    def can_manage_keys(self) -> bool:
        return self.membership.can_manage_keys

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @classmethod
    def for_membership(cls, membership: Membership) -> "Principal":
        return cls(
            org=membership.org,
            user=membership.user,
            membership=membership,
            scopes=membership.scopes,
        )
