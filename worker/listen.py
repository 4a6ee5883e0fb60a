"""``python -m worker.listen``: the demo's listener (``manage.py audit_stream listen``, the demo's app)."""

import logging
import os


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    import django

    django.setup()
    from audit_stream.stream.listen import run
    from worker.celery import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run(app.send_task)


if __name__ == "__main__":
    main()
