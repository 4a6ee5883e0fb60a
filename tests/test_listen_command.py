"""``manage.py audit_stream listen``: the listener as a command of the project, with its Celery app."""

import os
import subprocess
import sys

from tests.procs import ROOT, child_env


def _audit_stream(*args):
    return subprocess.run(
        [sys.executable, "-m", "django", "audit_stream", *args],
        cwd=ROOT,
        env={**child_env(), **{k: v for k, v in os.environ.items() if k == "PATH"}},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_without_a_celery_app_the_listener_refuses_to_start_and_says_how_to_load_one():
    """tests.settings loads no Celery app: the listener would have nowhere to send its tasks."""
    result = _audit_stream("listen")
    assert result.returncode == 1
    assert "No Celery app is loaded" in result.stderr
    assert "--app" in result.stderr


def test_an_app_that_cannot_be_loaded_is_named():
    result = _audit_stream("listen", "--app", "no_such_project")
    assert result.returncode == 1
    assert "Cannot load the Celery app 'no_such_project'" in result.stderr


def test_an_unknown_action_lists_the_actions():
    result = _audit_stream("shout")
    assert result.returncode != 0
    assert "invalid choice: 'shout'" in result.stderr and "listen" in result.stderr
