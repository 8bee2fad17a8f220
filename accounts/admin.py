"""The operators' console for accounts: orgs and their members, users, API keys.

API keys are never created here (the secret is shown once, to the org that made it) and their
digest is never shown; staff can only look and revoke. The org page gets its ledger tools from
settlement.admin, which extends OrgAdmin (settlement imports accounts, never the reverse).
"""

from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import AdminUserCreationForm, UserChangeForm
from django.utils import timezone

from accounts.models import ApiKey, Membership, Org, User

API_KEY_FIELDS = (
    "prefix",
    "name",
    "org",
    "scopes",
    "status",
    "created_by",
    "created_at",
    "expires_at",
    "last_used_at",
    "revoked_at",
)


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    fields = ("user", "role", "created_at")
    readonly_fields = ("created_at",)
    autocomplete_fields = ("user",)


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    fields = ("prefix", "name", "scopes", "status", "last_used_at", "revoked_at")
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False


@admin.register(Org)
class OrgAdmin(admin.ModelAdmin):
    list_display = ("name", "slug", "is_buyer", "is_provider", "created_at")
    list_filter = ("is_buyer", "is_provider")
    search_fields = ("name", "slug")
    ordering = ("name",)
    readonly_fields = ("created_at",)
    fields = ("name", "slug", "is_buyer", "is_provider", "created_at")
    inlines = (MembershipInline, ApiKeyInline)


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("user", "org", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("user__email", "org__name")
    list_select_related = ("user", "org")
    autocomplete_fields = ("user", "org")
    readonly_fields = ("created_at",)


class UserCreationForm(AdminUserCreationForm):
    """Django's admin creation form with the email as the login (the model has no username)."""

    class Meta:
        model = User
        fields = ("email",)
        field_classes: dict = {}

    def clean_email(self) -> str:
        # The manager lower-cases emails at sign-up; do the same so one address is one user.
        email = self.cleaned_data["email"].strip().lower()
        if User.objects.filter(email__iexact=email).exists():
            raise forms.ValidationError("A user with this email already exists.")
        return email


class UserChangeFormByEmail(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"
        field_classes: dict = {}


class UserMembershipInline(MembershipInline):
    fields = ("org", "role", "created_at")
    autocomplete_fields = ("org",)


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    form = UserChangeFormByEmail
    add_form = UserCreationForm
    fieldsets = (
        (None, {"fields": ("email", "password")}),
        ("Personal info", {"fields": ("first_name", "last_name")}),
        (
            "Permissions",
            {
                "fields": (
                    "is_active",
                    "is_staff",
                    "is_superuser",
                    "groups",
                    "user_permissions",
                )
            },
        ),
        ("Important dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (
            None,
            {
                "classes": ("wide",),
                "fields": ("email", "usable_password", "password1", "password2"),
            },
        ),
    )
    list_display = ("email", "first_name", "last_name", "is_staff", "is_active", "last_login")
    search_fields = ("email", "first_name", "last_name")
    ordering = ("email",)
    readonly_fields = ("last_login", "date_joined")
    inlines = (UserMembershipInline,)

    def get_inlines(self, request, obj):
        # The add page is Django's short one (email and password); memberships come after.
        return self.inlines if obj is not None else ()


class ApiKeyStatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "Active"), ("expired", "Expired"), ("revoked", "Revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "org", "scope_list", "status", "last_used_at", "created_at")
    list_filter = (ApiKeyStatusFilter,)
    search_fields = ("prefix", "name", "org__name")
    list_select_related = ("org",)
    # `secret_sha256` is deliberately absent from every list here: a digest of a 256-bit secret
    # can't be reversed, but it is a credential check all the same and nobody needs to see it.
    fields = API_KEY_FIELDS
    readonly_fields = API_KEY_FIELDS
    actions = ("revoke",)

    def has_add_permission(self, request) -> bool:
        return False  # keys are made by their org, which alone sees the secret

    def has_delete_permission(self, request, obj=None) -> bool:
        return False  # revoke instead: a deleted key would lose who made it and when it was used

    def has_change_permission(self, request, obj=None) -> bool:
        # The list keeps change permission so the revoke action is offered; one key's page is
        # view-only because every field is history.
        return obj is None and super().has_change_permission(request)

    @admin.display(description="scopes")
    def scope_list(self, obj: ApiKey) -> str:
        return ", ".join(obj.scopes)

    @admin.action(description="Revoke the selected API keys", permissions=["change"])
    def revoke(self, request, queryset) -> None:
        # accounts.services.api_key_revoke acts for an org member through a Principal; staff act
        # on any org's keys. The conditional UPDATE keeps the first revocation time.
        keys = list(queryset.filter(revoked_at__isnull=True))
        ApiKey.objects.filter(pk__in=[key.pk for key in keys], revoked_at__isnull=True).update(
            revoked_at=timezone.now()
        )
        for key in keys:
            self.log_change(request, key, "Revoked by staff.")
        self.message_user(request, f"Revoked {len(keys)} API key(s).", messages.SUCCESS)
