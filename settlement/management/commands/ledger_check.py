from django.core.management.base import BaseCommand, CommandError

from settlement.services import ledger_check


class Command(BaseCommand):
    help = "Verify every ledger invariant; print each breach and exit non-zero if there is any."

    def handle(self, *args, **options):
        problems = ledger_check()
        if problems:
            for problem in problems:
                self.stderr.write(f"BREACH: {problem}")
            raise CommandError(f"ledger_check found {len(problems)} problem(s)")
        self.stdout.write(self.style.SUCCESS("ledger_check: all invariants hold"))
