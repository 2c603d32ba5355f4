# syntax=docker/dockerfile:1
# TLINK push data service.
#   docker build -t tlink-push .
#   docker run --rm -p 5000:5000 --env-file .env tlink-push           # serve (HTTPS, self-signed)
#   docker run --rm -v tlink_logs:/app/logs tlink-push verify         # any tlink-push subcommand
ARG PYTHON_IMAGE=python:3.11-slim

# ---- builder: compilers live here only; the result is a self-contained venv ----
FROM ${PYTHON_IMAGE} AS builder

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1

# Wheels exist for every dependency on amd64/arm64; the compilers cover other platforms.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && rm -rf /var/lib/apt/lists/*

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# Dependencies first, from the lock alone: this layer is rebuilt only when requirements.lock
# changes, not on every change of the source or of setup.cfg. Every distribution's hash is
# checked; --no-deps because the lock already lists every package the service needs.
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --require-hashes --no-deps -r requirements.lock
# Then the project itself, without dependencies (pip builds its wheel in an isolated
# environment with the backend pyproject.toml names); pip check proves the lock covers
# every requirement of setup.cfg.
COPY . .
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps . \
    && pip check \
    && tlink-push --help >/dev/null

# ---- runtime: slim base, the venv, a non-root user ----
FROM ${PYTHON_IMAGE} AS runtime

LABEL org.opencontainers.image.title="tlink-push" \
      org.opencontainers.image.description="TLINK IoT push data service (aiohttp, event-sourced JSONL logs)"

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN groupadd --system --gid 10001 tlink \
    && useradd --system --uid 10001 --gid tlink --home-dir /app --no-create-home \
       --shell /usr/sbin/nologin tlink

COPY --from=builder /opt/venv /opt/venv

WORKDIR /app
# --chmod keeps the entrypoint executable even from a checkout that lost the mode bit.
COPY --chmod=0755 ops/docker-entrypoint.sh /app/ops/docker-entrypoint.sh

# Created and owned before VOLUME so fresh named volumes start out writable by tlink.
RUN mkdir -p /app/logs /app/data /app/instance/certs \
    && chown -R 10001:10001 /app/logs /app/data /app/instance
VOLUME ["/app/logs", "/app/data", "/app/instance"]

USER 10001:10001
EXPOSE 5000

# No curl in slim: Python's urllib, https without verification (self-signed) or http;
# an exception (refused, timeout, non-2xx) exits 1, which marks the container unhealthy.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, ssl, urllib.request as r; \
tls = os.environ.get('USE_HTTPS', 'true').strip().lower() in ('1', 'true', 'yes', 'on'); \
url = ('https' if tls else 'http') + '://127.0.0.1:' + os.environ.get('PORT', '5000') + '/api/health'; \
r.urlopen(url, timeout=4, context=ssl._create_unverified_context() if tls else None)"]

ENTRYPOINT ["/app/ops/docker-entrypoint.sh"]
CMD ["serve"]
