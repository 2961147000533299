# syntax=docker/dockerfile:1
# nasblade: one image for every role, chosen by the command (the `nasblade` CLI):
#
#   operator | controller | block-processor | boot -- file-processor | file-processor | up | ...
#
# Built by `make image` (see docs/install.md). Two stages:
#   build   -- a virtual environment in /opt/nasblade with nasblade and its dependencies,
#              installed from the wheels in build/wheels (made on the host by `make wheels`,
#              so this build needs no network), plus the blade software bundle that the
#              operator seeds into the program LU (/opt/nasblade/software/blade-<version>.pyz).
#   runtime -- the base image, the venv copied over, a non-root user (uid 10001).
#
# BASE_IMAGE defaults to the public python:3.11-slim; `make image` passes the locally
# built Debian bookworm base (tests/cluster/versions.env) so nothing is pulled here.
# Both must have python3 (3.11) at the same path in both stages.

ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS build
# PIP_NO_INDEX=1: install only from build/wheels (make image sets it; leave it empty to let
# pip fetch what the wheel directory lacks from PyPI).
ARG PIP_NO_INDEX=""
ARG NASBLADE_SOFTWARE_VERSION=0.1.0
ENV PIP_NO_INDEX=${PIP_NO_INDEX} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
COPY build/wheels/ /wheels/
COPY pyproject.toml README.md /src/
COPY blade/ /src/blade/
COPY operator/ /src/operator/
RUN python3 -m venv /opt/nasblade \
 && /opt/nasblade/bin/pip install --find-links /wheels "/src[operator]" \
 && mkdir -p /opt/nasblade/software \
 && /opt/nasblade/bin/nasblade software build --version "${NASBLADE_SOFTWARE_VERSION}" \
        --output "/opt/nasblade/software/blade-${NASBLADE_SOFTWARE_VERSION}.pyz" \
 && /opt/nasblade/bin/python -m pip uninstall -q -y pip setuptools wheel \
 && find /opt/nasblade -name 'tests' -path '*site-packages/*/tests' -prune -exec rm -rf {} +

FROM ${BASE_IMAGE} AS runtime
ARG NASBLADE_SOFTWARE_VERSION=0.1.0
LABEL org.opencontainers.image.title="nasblade" \
      org.opencontainers.image.description="NAS blades on Kubernetes: operator, controller, block and file processors" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/nasblade/nasblade"
# uid/gid 10001: what the operator's pod templates run as (runAsNonRoot needs a numeric USER).
RUN (getent group nasblade || groupadd --system --gid 10001 nasblade) \
 && (getent passwd nasblade || useradd --system --uid 10001 --gid 10001 \
        --home-dir /var/lib/nasblade --create-home --shell /usr/sbin/nologin nasblade) \
 && mkdir -p /run/nasblade /devices && chown 10001:10001 /run/nasblade /devices
COPY --from=build /opt/nasblade /opt/nasblade
ENV PATH=/opt/nasblade/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NASBLADE_SOFTWARE_BUNDLE=/opt/nasblade/software/blade-${NASBLADE_SOFTWARE_VERSION}.pyz
USER 10001:10001
WORKDIR /var/lib/nasblade
ENTRYPOINT ["nasblade"]
CMD ["--help"]
