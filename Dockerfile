# The demo site: `docker compose up` (see docker-compose.yml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY . .
RUN pip install -e ".[demo]"

EXPOSE 8000
CMD ["sh", "-c", "python manage.py migrate --no-input && python manage.py demo_setup && exec python manage.py runserver 0.0.0.0:8000"]
