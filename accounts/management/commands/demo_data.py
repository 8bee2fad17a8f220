"""Load the demo's people and orgs. Safe to run again: it finds what exists and changes nothing."""

from django.core.management.base import BaseCommand
from django.db import transaction

from accounts.models import Membership, Org, Role, User

DEMO_PASSWORD = "demo-pass-123"

DEMO_ORGS = [
    # (email, org name, slug, is_buyer, is_provider)
    ("buyer@demo.local", "Demo Buyer", "demo-buyer", True, False),
    ("provider@demo.local", "Demo Provider", "demo-provider", False, True),
]


class Command(BaseCommand):
    help = "Create the demo staff user, a buyer org and a provider org (idempotent); print logins."

    @transaction.atomic
    def handle(self, *args, **options):
        staff, created = User.objects.get_or_create(
            email="admin@demo.local", defaults={"is_staff": True, "is_superuser": True}
        )
        if created:
            staff.set_password(DEMO_PASSWORD)
            staff.save()
        logins = [("staff (admin console)", staff.email)]
        for email, name, slug, is_buyer, is_provider in DEMO_ORGS:
            user, created = User.objects.get_or_create(email=email)
            if created:
                user.set_password(DEMO_PASSWORD)
                user.save()
            org, _ = Org.objects.get_or_create(
                slug=slug, defaults={"name": name, "is_buyer": is_buyer, "is_provider": is_provider}
            )
            Membership.objects.get_or_create(user=user, org=org, defaults={"role": Role.OWNER})
            logins.append((name, email))
        self.stdout.write(f"Demo logins (password for all: {DEMO_PASSWORD})")
        for label, email in logins:
            self.stdout.write(f"  {label:<24} {email}")
