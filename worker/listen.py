"""``python -m worker.listen``: the listener process (see audit_stream.stream.listen)."""

import logging
import os
import signal


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "demo.settings")
    import django

    django.setup()
    from django.db import connections

    from audit_stream import config
    from audit_stream.stream.listen import Listener
    from worker.celery import app

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = connections[config.listen_database()].get_connection_params()
    listener = Listener(params, enqueue=lambda task, key: app.send_task(task, args=[key]))
    signal.signal(signal.SIGTERM, listener.stop)
    signal.signal(signal.SIGINT, listener.stop)
    listener.run()


if __name__ == "__main__":
    main()
