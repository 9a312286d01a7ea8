# syntax=docker/dockerfile:1
# polarity-exporter container image.
#
#   docker build -t polarity-exporter .
#   docker run --rm -p 10119:10119 --read-only polarity-exporter --demo
#
# Stage 1 builds the wheel and installs it into a self-contained venv; stage 2 copies only that
# venv onto a clean slim Python, so no build tool, compiler or pip cache reaches the final image.
# Both stages use the same base image so the venv's interpreter path (/usr/local/bin/python3.11)
# exists in the runtime stage.
# CI reaches no container registry, so tests/test_container.py builds this file with a stand-in
# base made locally with mmdebstrap (Debian bookworm's python3) as --build-arg PYTHON_IMAGE; users
# and the release workflow build on the default below.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md ./
COPY polarity_exporter/ ./polarity_exporter/
RUN python -m build --wheel --outdir /dist . \
 && python -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir /dist/*.whl

FROM ${PYTHON_IMAGE}
ARG VERSION=0.4.0
LABEL org.opencontainers.image.title="polarity-exporter" \
      org.opencontainers.image.description="Prometheus exporter for Polarity servers: integration status and errors" \
      org.opencontainers.image.source="https://github.com/polarity-exporter/polarity-exporter" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Bytecode is compiled at install time; never try to write .pyc files at run time, so the
# container works with a read-only root filesystem.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
COPY --from=build /opt/venv /opt/venv
# A numeric uid/gid that exists in no passwd file: Kubernetes' runAsNonRoot can verify it, and
# nothing in the image is writable by it.
USER 65532:65532
EXPOSE 10119
# No HEALTHCHECK: the image has no curl/wget, and a check hard-wired to http:// breaks once the
# exporter serves TLS. Orchestrators probe /-/healthy and /-/ready themselves.
ENTRYPOINT ["polarity-exporter"]
