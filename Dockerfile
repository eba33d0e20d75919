# Renkei's image: every worker and connector is this image with a `renkei` subcommand (infra/compose.yaml).
#   docker build -t renkei:0.1.0 .
#   docker run --rm renkei:0.1.0 worker hub --ops-host 0.0.0.0 --ops-port 9100
# Slim, non-root, nothing but the installed package: the source stays in the build stage. Secrets come as
# files (RENKEI_*_FILE, RENKEI_PG_PASSFILE), never as build arguments or image layers. See docs/operations.md,
# "Deploying with containers"; tests/unit/test_dockerfile.py lints this file with hadolint.

FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY infra ./infra
COPY streams ./streams
COPY schemas ./schemas
COPY connectors ./connectors
# The otel extra: each hop is also an OpenTelemetry span where an SDK provider is configured (no-op otherwise).
RUN python -m venv /opt/renkei && /opt/renkei/bin/pip install --no-cache-dir ".[otel]"

FROM python:3.11-slim
# A fixed uid/gid, so mounted secrets can be made readable by it alone (chown 10001, mode 0400).
RUN groupadd --system --gid 10001 renkei \
 && useradd --system --uid 10001 --gid renkei --home-dir /var/lib/renkei --create-home --shell /usr/sbin/nologin renkei
COPY --from=build /opt/renkei /opt/renkei
ENV PATH=/opt/renkei/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    RENKEI_STATE_DIR=/var/lib/renkei \
    RENKEI_LOG_FORMAT=json \
    RENKEI_OPS_HOST=0.0.0.0 \
    RENKEI_OPS_PORT=9100
USER 10001:10001
WORKDIR /var/lib/renkei
EXPOSE 9100
# /health answers 200 while the worker is ok (503 starting or failing: infra/platform/metrics.py); the portal, which
# serves /health on its own port, overrides this in infra/compose.yaml.
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('RENKEI_OPS_PORT', '9100'), timeout=4)"]
ENTRYPOINT ["renkei"]
CMD ["--help"]
