# One image for both services of docker-compose.yml: `keyrack serve` (the proxy, default command) and
# `keyrack dashboard`. The same subcommands `make run` starts. No Docker engine exists on the build machine:
# tests/test_deploy.py validates this file's commands and docker-compose.yml without building.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    KEYRACK_DATA_DIR=/data

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy_service ./proxy_service
COPY dashboard ./dashboard
RUN pip install '.[cluster]' \
 && useradd --create-home --uid 10001 keyrack \
 && mkdir -p /data /lake \
 && chown keyrack /data /lake

USER keyrack
VOLUME ["/data"]
EXPOSE 8080 8501
# Binding 0.0.0.0 requires KEYRACK_ACCESS_TOKENS (the proxy refuses to start open to the network).
CMD ["keyrack", "serve", "--host", "0.0.0.0"]
