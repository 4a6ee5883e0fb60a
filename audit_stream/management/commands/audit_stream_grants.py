"""``manage.py audit_stream_grants <role>``: the privileges of the application's runtime role."""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError
from django.db import DEFAULT_DB_ALIAS, connections, transaction

from audit_stream import grants


class Command(BaseCommand):
    help = (
        "Print (or, with --apply, run) the GRANT and REVOKE statements that give a runtime role what"
        " the application needs and no more: it can read history, never write, delete or skip it."
        " Run as the owner role, after every migrate."
    )

    def add_arguments(self, parser):
        parser.add_argument("role", help="the role the application (web, worker, listener) connects with")
        parser.add_argument("--apply", action="store_true", help="run the statements (in one transaction)")
        parser.add_argument(
            "--pruner", metavar="ROLE", help="also let ROLE delete history (retention of event tables)"
        )
        parser.add_argument("--database", default=DEFAULT_DB_ALIAS, help="the database alias")

    def handle(self, *args, role, apply, pruner, database, **options):
        connection = connections[database]
        if connection.vendor != "postgresql":
            raise CommandError(f'The database "{database}" is {connection.vendor}, not PostgreSQL.')
        problem = grants.role_problem(role, using=database)
        if problem:
            raise CommandError(problem)
        statements = grants.statements(role, pruner=pruner, using=database)
        if not apply:
            self.stdout.write("\n".join(statements))
            return
        with transaction.atomic(using=database), connection.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement)
        self.stdout.write(self.style.SUCCESS(f"Applied {len(statements)} statements for role {role!r}."))
