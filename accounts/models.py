"""Who acts: users, the organisations they act for, and the API keys organisations hold.

- `User` signs in with an email address. Staff (operators) are users with `is_staff`.
- `Org` is a buyer, a provider or both (at least one: a CHECK constraint).
- `Membership` ties a user to an org with a role; a user in several orgs picks the active one.
  Roles nest: viewer < trader < admin < owner (see ROLE_SCOPES for what each may do).
- `ApiKey` belongs to an org and acts with the permissions of the member who made it, cut down to
  its scopes. Only a SHA-256 digest of the secret is stored; the prefix is shown to find the key.
"""

from django.contrib.auth.models import AbstractUser, BaseUserManager
from django.db import models
from django.db.models import Q
from django.utils import timezone


class UserManager(BaseUserManager):
    use_in_migrations = True

    def create_user(self, email: str, password: str | None = None, **extra):
        if not email:
            raise ValueError("email is required")
        user = self.model(email=self.normalize_email(email).lower(), **extra)
        user.set_password(password)
        user.save(using=self._db)
        return user

    def create_superuser(self, email: str, password: str | None = None, **extra):
        extra.setdefault("is_staff", True)
        extra.setdefault("is_superuser", True)
        return self.create_user(email, password, **extra)


class User(AbstractUser):
    username = None
    email = models.EmailField(unique=True)

    USERNAME_FIELD = "email"
    REQUIRED_FIELDS: list[str] = []

    objects = UserManager()

    def __str__(self) -> str:
        return self.email


class Org(models.Model):
    name = models.CharField(max_length=120)
    slug = models.SlugField(max_length=140, unique=True)
    is_buyer = models.BooleanField(default=True)
    is_provider = models.BooleanField(default=False)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.CheckConstraint(
                condition=Q(is_buyer=True) | Q(is_provider=True), name="org_has_a_role"
            )
        ]

    def __str__(self) -> str:
        return self.name


class Role(models.TextChoices):
    VIEWER = "viewer", "Viewer"
    TRADER = "trader", "Trader"
    ADMIN = "admin", "Admin"
    OWNER = "owner", "Owner"


class Scope(models.TextChoices):
    READ = "read", "Read balances, orders and statements"
    TRADE = "trade", "Place and cancel orders, top up"
    USAGE_WRITE = "usage:write", "Report usage"
    RELAY = "relay", "Send requests through the relay"
    PAYOUTS = "payouts", "Request payouts and withdrawals"


ALL_SCOPES = frozenset(Scope.values)

# What a member of each role may do; an API key can never do more than the member who made it.
ROLE_SCOPES: dict[str, frozenset[str]] = {
    Role.VIEWER: frozenset({Scope.READ}),
    Role.TRADER: frozenset({Scope.READ, Scope.TRADE, Scope.USAGE_WRITE, Scope.RELAY}),
    Role.ADMIN: ALL_SCOPES,
    Role.OWNER: ALL_SCOPES,
}
# Managing API keys and members is a role capability, not a key scope.
KEY_MANAGER_ROLES = frozenset({Role.ADMIN, Role.OWNER})


class Membership(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="memberships")
    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "org"], name="membership_unique_user_org")
        ]

    def __str__(self) -> str:
        return f"{self.user} in {self.org} as {self.role}"

    @property
    def scopes(self) -> frozenset[str]:
        return ROLE_SCOPES[self.role]

    @property
    def can_manage_keys(self) -> bool:
        return self.role in KEY_MANAGER_ROLES


class ApiKey(models.Model):
    PREFIX_LENGTH = 12

    org = models.ForeignKey(Org, on_delete=models.CASCADE, related_name="api_keys")
    created_by = models.ForeignKey(User, on_delete=models.PROTECT, related_name="+")
    name = models.CharField(max_length=80)
    prefix = models.CharField(max_length=16, unique=True)
    secret_sha256 = models.CharField(max_length=64)
    scopes = models.JSONField(default=list)
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["org", "-created_at"])]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    def is_active_at(self, moment) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or self.expires_at > moment

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"
