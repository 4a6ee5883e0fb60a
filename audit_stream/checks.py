"""System checks: bad declarations and bad settings stop start-up with a clear message.

=====================  =========================================================
``audit_stream.E001``  ``fields``/``exclude`` names a field the model does not have
``audit_stream.E002``  both ``fields`` and ``exclude`` were given
``audit_stream.E003``  a tracked model is migrated to a database that is not PostgreSQL
``audit_stream.E004``  one event model declares the same label twice
``audit_stream.E005``  an event declaration that cannot be installed (e.g. its condition)
``audit_stream.E006``  an event model's foreign key cascades or sets null: deletes would fail
``audit_stream.E007``  ``pgtrigger`` is not in ``INSTALLED_APPS``: no trigger would be migrated
``audit_stream.E008``  ``obj_fk`` given for a model with a composite primary key (leave it out)
``audit_stream.E009``  ``track(mask=...)`` names a field the model does not have
``audit_stream.E010``  ``AUDIT_STREAM`` is not a dict, has an unknown key or a bad value
``audit_stream.E011``  ``AUDIT_STREAM["RETENTION"]`` is invalid (unknown target, bad duration...)
``audit_stream.E012``  ``AUDIT_STREAM["FOLD_LANES"]`` is invalid (unknown model, not 1 to 64 lanes...)
``audit_stream.E013``  ``AUDIT_STREAM["MASK"]`` or ``MASK_KEY`` is invalid (e.g. an unknown field)
``audit_stream.W020``  (``--deploy``) the application connects as a superuser
``audit_stream.W021``  (``--deploy``) the application connects as the owner of the history tables
``audit_stream.W022``  (``--deploy``) the application's role may write or delete history
=====================  =========================================================
"""

from __future__ import annotations

from django.apps import apps
from django.conf import settings
from django.core import checks
from django.db import connections, models, router

from audit_stream import config, registry, tracking


@checks.register()
def check_declarations(app_configs=None, **kwargs):
    """Report the problems found while the event models were built."""
    return [
        checks.Error(message, hint=hint, obj=label, id=check_id)
        for label, message, hint, check_id in registry.problems
    ]


@checks.register()
def check_pgtrigger_installed(app_configs=None, **kwargs):
    """The triggers are migrated by django-pgtrigger: without its app, history is silently empty."""
    if apps.is_installed("pgtrigger"):
        return []
    return [
        checks.Error(
            '"pgtrigger" is not in INSTALLED_APPS: audit_stream\'s triggers are installed by'
            " django-pgtrigger's migrations, so without it makemigrations writes no trigger and no"
            " history is recorded.",
            hint='Add "pgtrigger" to INSTALLED_APPS (next to "audit_stream"), then run makemigrations.',
            id="audit_stream.E007",
        )
    ]


def _on_delete_name(on_delete) -> str:
    return getattr(on_delete, "__name__", repr(on_delete)).replace("set_on_delete", "SET(...)")


def _writes_on_delete(field: models.Field) -> bool:
    """Whether deleting the row ``field`` points to makes Django delete or update this row."""
    on_delete = getattr(field.remote_field, "on_delete", None)
    return on_delete in (models.CASCADE, models.SET_NULL, models.SET_DEFAULT) or hasattr(
        on_delete,
        "deconstruct",  # models.SET(value)
    )


@checks.register()
def check_foreign_keys(app_configs=None, **kwargs):
    """Append-only history cannot be deleted or updated by a cascade: catch it at start-up."""
    if not config.append_only():
        return []
    errors = []
    for event_model in sorted(set(tracking._labels.values()), key=lambda m: m._meta.label):
        for field in event_model._meta.concrete_fields:
            if not field.many_to_one or not _writes_on_delete(field):
                continue
            on_delete = _on_delete_name(field.remote_field.on_delete)
            related = field.related_model._meta.label
            fix = (
                "Leave obj_fk out (the default keeps history when the object goes), or pass"
                f" obj_fk=models.ForeignKey({related}, on_delete=models.DO_NOTHING, db_constraint=False)."
                if field.name == "pgh_obj"
                else f"Declare {field.name} with on_delete=models.DO_NOTHING, db_constraint=False"
                " (history outlives the rows it points to)."
            )
            errors.append(
                checks.Error(
                    f"{event_model._meta.label}.{field.name} has on_delete={on_delete}: deleting a"
                    f" {related} would {'delete' if on_delete == 'CASCADE' else 'update'} its history,"
                    ' which is append-only, so the delete would fail with "history is append-only".',
                    hint=fix + ' Or set AUDIT_STREAM["APPEND_ONLY"] = False.',
                    obj=event_model._meta.label,
                    id="audit_stream.E006",
                )
            )
    return errors


@checks.register()
def check_databases(app_configs=None, **kwargs):
    """Triggers need PostgreSQL on every database a tracked model is migrated to."""
    errors = []
    for event_model in sorted(set(tracking._labels.values()), key=lambda m: m._meta.label):
        for alias in connections:
            vendor = connections[alias].vendor
            if vendor != "postgresql" and router.allow_migrate_model(alias, event_model):
                errors.append(
                    checks.Error(
                        f"{event_model.pgh_tracked_model._meta.label} is tracked by audit_stream, but"
                        f' the database "{alias}" it is migrated to is {vendor}, not PostgreSQL.',
                        hint="Use django.db.backends.postgresql, or route these models away from"
                        " that database with a database router.",
                        obj=event_model._meta.label,
                        id="audit_stream.E003",
                    )
                )
    return errors


@checks.register()
def check_settings(app_configs=None, **kwargs):
    """``AUDIT_STREAM`` must be a dict of known keys with values of the right type."""
    value = getattr(settings, "AUDIT_STREAM", {})
    if not isinstance(value, dict):
        return [_settings_error(f"AUDIT_STREAM must be a dict, not {type(value).__name__}.")]
    errors = []
    for key, item in value.items():
        if key not in config.KEYS:
            errors.append(
                _settings_error(
                    f"AUDIT_STREAM has an unknown key {key!r}.",
                    hint="Known keys: " + ", ".join(sorted(config.KEYS)) + ".",
                )
            )
        elif not isinstance(item, config.KEYS[key]):
            expected = " or ".join(t.__name__ for t in config.KEYS[key])
            errors.append(
                _settings_error(f"AUDIT_STREAM[{key!r}] must be a {expected}, not {type(item).__name__}.")
            )
    for name, tables in (
        ('AUDIT_STREAM["IGNORE_TABLES"]', value.get("IGNORE_TABLES", [])),
        ("PG_MEMENTO_IGNORE_TABLES", getattr(settings, "PG_MEMENTO_IGNORE_TABLES", [])),
    ):
        if name.startswith("AUDIT_STREAM") and not isinstance(tables, (list, tuple)):
            continue  # reported above
        if not isinstance(tables, (list, tuple)) or not all(isinstance(t, str) and t for t in tables):
            errors.append(
                _settings_error(
                    f"{name} must be a list of table names, like ['django_session', 'celery_*'].",
                    hint="Write each table as 'table' or 'schema.table'; shell patterns are allowed.",
                )
            )
    if not errors and "JSON_ENCODER" in value:
        try:
            config.json_encoder()
        except ImportError as exc:
            errors.append(_settings_error(f"AUDIT_STREAM['JSON_ENCODER'] cannot be imported: {exc}."))
    return errors


def _settings_error(message: str, hint: str | None = None) -> checks.Error:
    return checks.Error(
        message, hint=hint or "See the settings reference in the README.", id="audit_stream.E010"
    )


@checks.register()
def check_retention(app_configs=None, **kwargs):
    """Retention policies must parse: known targets, durations like "90d", positive keep_last."""
    from audit_stream import retention

    try:
        retention.policies()
    except ValueError as exc:
        return [
            checks.Error(str(exc), hint="See the retention section of the README.", id="audit_stream.E011")
        ]
    return []


@checks.register()
def check_fold_lanes(app_configs=None, **kwargs):
    """Fold lanes must name event models and be whole numbers from 1 to 64."""
    from audit_stream.stream import lanes

    return [
        checks.Error(problem, hint="See the fold lanes section of the README.", id="audit_stream.E012")
        for problem in lanes.problems()
    ]


@checks.register()
def check_mask(app_configs=None, **kwargs):
    """``AUDIT_STREAM["MASK"]`` must name installed models' fields (or tables' columns)."""
    from audit_stream import masking

    if not isinstance(getattr(settings, "AUDIT_STREAM", {}), dict):
        return []  # reported by check_settings
    return [
        checks.Error(
            problem,
            hint='Fix AUDIT_STREAM["MASK"]: {"app_label.Model": ["field", ...], "table": ["column", ...]};'
            " see Masking in the README.",
            id="audit_stream.E013",
        )
        for problem in masking.validate()
    ]


# -- deployment: the role the application connects with ------------------------------------------

# What the connected role may do to history: superuser, member of the owner of
# audit_stream's Context table, and the history tables it can write to.
_ROLE_SQL = """
SELECT (SELECT rolsuper FROM pg_roles WHERE rolname = current_user),
       pg_has_role(current_user, c.relowner, 'MEMBER'),
       ARRAY(SELECT t.name FROM unnest(%s::text[]) AS t(name)
             WHERE to_regclass(t.name) IS NOT NULL
               AND has_table_privilege(t.name, 'INSERT, UPDATE, DELETE, TRUNCATE, TRIGGER'))
FROM pg_class AS c WHERE c.oid = to_regclass(%s)
"""

_FIX = (
    "Run migrations as an owner role and connect the application as a runtime role with"
    " the privileges `manage.py audit_stream_grants <runtime role> --apply` gives (README, Deployment)."
)


@checks.register(checks.Tags.security, deploy=True)
def check_database_role(app_configs=None, **kwargs):
    """``check --deploy``: the application's role must not be able to change or skip history."""
    from audit_stream import grants, triggers
    from audit_stream.models import Context

    warnings = []
    for alias in connections:
        connection = connections[alias]
        if connection.vendor != "postgresql" or not router.allow_migrate_model(alias, Context):
            continue
        history = [triggers.qualified(table) for table in grants.history_tables()]
        try:
            with connection.cursor() as cursor:
                cursor.execute(_ROLE_SQL, [history, triggers.qualified(Context._meta.db_table)])
                row = cursor.fetchone()
        except Exception:  # no database to ask (e.g. a build step): nothing to check
            continue
        if row is None:
            continue  # not migrated yet
        superuser, owner, writable = row
        user = connection.settings_dict.get("USER") or "the default role"
        if superuser:
            message = f'The database "{alias}" is used as a superuser ({user}).'
            check_id = "audit_stream.W020"
        elif owner:
            message = f'The database "{alias}" is used as the owner of audit_stream\'s tables ({user}).'
            check_id = "audit_stream.W021"
        elif writable:
            message = (
                f'The role {user} of the database "{alias}" may write or delete history:'
                f" {', '.join(writable[:3])}{'...' if len(writable) > 3 else ''}."
            )
            check_id = "audit_stream.W022"
        else:
            continue
        warnings.append(
            checks.Warning(
                message + " It can then delete, change or skip the history audit_stream records.",
                hint=_FIX,
                id=check_id,
            )
        )
    return warnings
