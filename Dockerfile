# One image for every process of docker-compose.yml: worker, beat, flower, ingest, sandbox.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Only what the distribution holds; tests, benchmarks and local state stay out (.dockerignore).
COPY pyproject.toml README.md ./
COPY producers producers
COPY worker worker
COPY sandbox sandbox
COPY ingest ingest
RUN pip install . \
    && useradd --system --uid 10001 --home-dir /var/lib/snackvideo snackvideo \
    && mkdir -p /var/lib/snackvideo \
    && chown snackvideo /var/lib/snackvideo

# No process of this image needs root.
USER snackvideo
ENV SNACKVIDEO_STATE_DIR=/var/lib/snackvideo
EXPOSE 9808 5555 8088 8099
CMD ["celery", "-A", "worker", "worker", "--loglevel", "INFO"]
