"""A fresh ``django-admin startproject`` project, set up by following the README's Installation.

The code blocks of the README's Installation section are written into the
project as they are (``# mysite/celery.py``, ``# mysite/settings.py (append)``,
...); only the database name and the Redis URL are then overridden for this
test run. The package is installed from this checkout into a new virtualenv
(``pip install <checkout>``: the files that make the distribution, copied first so
that the build writes nothing into the checkout; without dependencies: they are reused from the
test's own environment through a ``.pth`` file, to keep the test fast).
Then the project's own Celery worker and ``manage.py audit_stream listen``
run, and a write must become a ``Change`` row.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import psycopg
import pytest
from django.conf import settings

from tests.procs import ROOT, Proc, wait_until

_README = (ROOT / "README.md").read_text()
_INSTALLATION = _README[_README.index("## Installation") : _README.index("## Coming from django-pghistory")]


_WRITE = "from shop.models import Product; Product.objects.create(name='lamp', price='12.50')"
_QUIET = ["--without-gossip", "--without-mingle", "--without-heartbeat"]


def _block(first_line: str) -> str:
    """The code block of the Installation section whose first line starts with ``first_line``."""
    match = re.search(r"```(?:python|sh)\n(" + re.escape(first_line) + r".*?)```", _INSTALLATION, re.S)
    assert match, f"the README's Installation has no code block starting with {first_line!r}"
    return match.group(1)


def _run(args: list[str], cwd: Path, env: dict, timeout: float = 180) -> str:
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, args))} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


@pytest.fixture
def project_database():
    """A database of its own, named after the test database (never another engineer's)."""
    db = settings.DATABASES["default"]
    name = f"{db['NAME']}_startproject"
    admin = {"host": db["HOST"], "port": db["PORT"] or 5432, "user": db["USER"], "dbname": "postgres"}
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    yield {**admin, "dbname": name}
    with psycopg.connect(**admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_a_fresh_project_set_up_from_the_readme_records_a_write_as_a_change(tmp_path, project_database):
    # A virtualenv with audit_stream installed from this checkout: "pip install /path/to/audit_stream".
    assert "pip install /path/to/audit_stream" in _INSTALLATION
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, dict(os.environ))
    python = str(venv / "bin" / "python")
    site = Path(
        subprocess.check_output(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], text=True
        ).strip()
    )
    (site / "_test_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # The checkout's files that make the distribution, copied so the build leaves no build/ behind here.
    checkout = tmp_path / "checkout"
    shutil.copytree(
        ROOT / "audit_stream", checkout / "audit_stream", ignore=shutil.ignore_patterns("__pycache__")
    )
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, checkout / name)
    pip = [sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", str(checkout)]
    _run(pip, tmp_path, dict(os.environ))

    # The project's processes see nothing of the test suite's environment.
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PYTHONUNBUFFERED": "1", "LANG": "C.UTF-8"}
    installed = _run([python, "-c", "import audit_stream; print(audit_stream.__file__)"], tmp_path, env)
    assert installed.startswith(str(site)), installed  # the installed copy, not this checkout
    _run([python, "-c", "import importlib.util as u; assert u.find_spec('worker') is None"], tmp_path, env)

    # django-admin startproject mysite; manage.py startapp shop.
    project = tmp_path / "mysite"
    project.mkdir()
    _run([python, "-m", "django", "startproject", "mysite", "."], project, env)
    _run([python, "manage.py", "startapp", "shop"], project, env)

    # The README's blocks, as written; then this run's database and Redis database.
    settings_py = project / "mysite" / "settings.py"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/15")
    db = project_database
    settings_py.write_text(
        settings_py.read_text()
        + "\n"
        + _block("# mysite/settings.py (append)")
        + '\nINSTALLED_APPS += ["shop"]\n'
        + f"DATABASES['default'].update(NAME={db['dbname']!r}, HOST={db['host']!r},"
        f" PORT={str(db['port'])!r}, USER={db['user']!r})\n" + f"CELERY_BROKER_URL = {redis_url!r}\n"
    )
    (project / "mysite" / "celery.py").write_text(_block("# mysite/celery.py"))
    (project / "mysite" / "__init__.py").write_text(_block("# mysite/__init__.py"))
    (project / "shop" / "models.py").write_text(_block("# shop/models.py"))

    commands = _block("python manage.py makemigrations")
    assert "python manage.py migrate" in commands
    _run([python, "manage.py", "check"], project, env)
    made = _run([python, "manage.py", "makemigrations"], project, env)
    assert "Create model ProductEvent" in made and "Create trigger snapshot_ins" in made, made
    _run([python, "manage.py", "migrate", "--no-input"], project, env)

    run = _block("celery -A mysite worker -l info")
    assert "python manage.py audit_stream listen" in run
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    worker = _Proc(
        "worker",
        [python, "-m", "celery", "-A", "mysite", "worker", "-l", "info", "-c", "1", *_QUIET],
        project,
        env,
        " ready.",
        log_dir,
    )
    listener = _Proc(
        "listener", [python, "manage.py", "audit_stream", "listen"], project, env, "listener: active", log_dir
    )
    try:
        worker.wait_ready(timeout=90)
        listener.wait_ready(timeout=90)
        _run([python, "manage.py", "shell", "-c", _WRITE], project, env)

        def change():
            with psycopg.connect(**project_database) as conn:
                return conn.execute("SELECT model, label, diff FROM audit_stream_change").fetchall()

        try:
            rows = wait_until(change, timeout=90, message="the write to become a Change row")
        except AssertionError as exc:
            raise AssertionError(
                f"worker:\n{worker.output()[-3000:]}\nlistener:\n{listener.output()[-3000:]}"
            ) from exc
        assert [(model, label, diff["name"], diff["price"]) for model, label, diff in rows] == [
            ("shop.product", "snapshot", [None, "lamp"], [None, 12.5])
        ]
    finally:
        listener.stop()
        worker.stop()


class _Proc(Proc):
    """A process of the temporary project (``Proc`` runs in this repository, with its environment)."""

    def __init__(self, name: str, args: list[str], cwd: Path, env: dict, ready: str, log_dir: Path) -> None:
        self.name = name
        self.log = log_dir / f"{name}.log"
        self.ready = ready
        self._file = open(self.log, "ab")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            args, cwd=cwd, env=env, stdout=self._file, stderr=subprocess.STDOUT, start_new_session=True
        )
