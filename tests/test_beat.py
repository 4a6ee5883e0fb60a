"""``audit_stream.beat.schedule(app)``: one line puts audit_stream's periodic tasks in your beat."""

from celery import Celery

import audit_stream.beat


def _schedule(app):
    return {name: (entry["task"], entry["schedule"]) for name, entry in app.conf.beat_schedule.items()}


def test_the_sweep_and_retention_join_the_projects_own_schedule(settings):
    settings.AUDIT_STREAM = {"RETENTION_INTERVAL": 600}
    app = Celery("mysite", set_as_current=False)
    app.conf.beat_schedule = {"mysite.report": {"task": "mysite.report", "schedule": 3600.0}}
    audit_stream.beat.schedule(app)
    app.finalize()
    assert _schedule(app) == {
        "mysite.report": ("mysite.report", 3600.0),
        "audit_stream.sweep": ("audit_stream.sweep", 30.0),
        "audit_stream.prune": ("audit_stream.prune", 600.0),
        "audit_stream.ensure_partitions": ("audit_stream.ensure_partitions", 300.0),
    }


def test_an_app_finalized_already_gets_the_entries_at_once():
    app = Celery("mysite", set_as_current=False)
    app.finalize()
    audit_stream.beat.schedule(app)
    assert set(_schedule(app)) == {
        "audit_stream.sweep",
        "audit_stream.prune",
        "audit_stream.ensure_partitions",
    }
