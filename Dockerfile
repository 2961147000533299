# nasblade: one image for every role, chosen by the command (the `nasblade` CLI):
#
#   operator | controller | block-processor | boot -- file-processor | file-processor | up | ...
#
# Built by `make image` (see docs/install.md). Stages:
#   deps    -- a virtual environment in /opt/nasblade with the third-party dependencies,
#              installed from the wheels in build/wheels (made on the host by `make wheels`,
#              so this build needs no network);
#   app     -- nasblade itself in that venv, plus the blade software bundle the operator
#              seeds into the program LU (/opt/nasblade/software/blade-<version>.pyz) and the
#              CSI driver's gRPC code, compiled from the protos `make image` puts in
#              build/proto (/opt/nasblade/csi, NASBLADE_CSI_CODE);
#   runtime -- the base image, the deps venv (a layer that stays cached while only our code
#              changes), nasblade on top, a non-root user (uid 10001).
#
# BASE_IMAGE defaults to the public python:3.11-slim; `make image` passes the locally
# built Debian bookworm base (tools/kube/versions.env) so nothing is pulled here.
# Both must have python3 (3.11) at the same path in both stages.

ARG BASE_IMAGE=python:3.11-slim

# -- deps: the third-party dependencies in a venv; rebuilt only when build/wheels changes
FROM ${BASE_IMAGE} AS deps
# PIP_NO_INDEX=1: install only from build/wheels (make image sets it; leave it empty to let
# pip fetch what the wheel directory lacks from PyPI).
ARG PIP_NO_INDEX=""
ENV PIP_NO_INDEX=${PIP_NO_INDEX} \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
COPY build/wheels/ /wheels/
COPY pyproject.toml /src/
# the dependencies listed in pyproject.toml (runtime + operator and csi extras) and the build backend
RUN python3 -m venv /opt/nasblade \
 && python3 -c 'import tomllib; p = tomllib.load(open("/src/pyproject.toml", "rb"))["project"]; \
print("\n".join(p["dependencies"] + p["optional-dependencies"]["operator"] + p["optional-dependencies"]["csi"] \
+ ["setuptools>=68", "wheel"]))' \
        > /tmp/requirements.txt
# kubernetes/aio: the official client's asyncio twin (68 MB) that nothing here imports (kopf
# logs in through kubernetes.config, the operator talks through pykube-ng).
RUN /opt/nasblade/bin/pip install -q --find-links /wheels -r /tmp/requirements.txt \
 && find /opt/nasblade -name 'tests' -path '*site-packages/*/tests' -prune -exec rm -rf {} + \
 && rm -rf /opt/nasblade/lib/python3*/site-packages/kubernetes/aio

# -- app: nasblade itself and the blade software bundle, staged under /stage for one COPY
FROM deps AS app
ARG NASBLADE_SOFTWARE_VERSION=0.1.0
COPY README.md /src/
COPY blade/ /src/blade/
COPY operator/ /src/operator/
COPY build/proto/ /src/proto/
RUN /opt/nasblade/bin/pip install -q --no-deps --no-build-isolation /src \
 && /opt/nasblade/bin/python -c 'from pathlib import Path; from nasblade_csi import proto; \
d = Path("/opt/nasblade/csi") / proto.SPEC_VERSION; \
proto.generate(d, Path("/src/proto/csi.proto")); \
proto.generate(d.parent / "pluginregistration-v1", Path("/src/proto/pluginregistration.proto"), module="pluginregistration")' \
 && mkdir -p /opt/nasblade/software \
 && /opt/nasblade/bin/nasblade software build --version "${NASBLADE_SOFTWARE_VERSION}" \
        --output "/opt/nasblade/software/blade-${NASBLADE_SOFTWARE_VERSION}.pyz" \
 && sp=$(/opt/nasblade/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') \
 && mkdir -p "/stage$sp" /stage/opt/nasblade/bin \
 && cp -a "$sp"/nasblade "$sp"/nasblade_operator "$sp"/nasblade_csi "$sp"/nasblade-*.dist-info "/stage$sp/" \
 && cp -a /opt/nasblade/bin/nasblade /opt/nasblade/bin/nasblade-csi /stage/opt/nasblade/bin/ \
 && cp -a /opt/nasblade/software /opt/nasblade/csi /stage/opt/nasblade/

# -- runtime: base + deps venv (a cached layer) + nasblade (a small layer) + user 10001
FROM ${BASE_IMAGE} AS runtime
ARG NASBLADE_SOFTWARE_VERSION=0.1.0
LABEL org.opencontainers.image.title="nasblade" \
      org.opencontainers.image.description="NAS blades on Kubernetes: operator, controller, block and file processors" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/nasblade/nasblade"
# mount.nfs for the CSI node plugin (NodeStage mounts a volume's NFS export on the node), from
# the Debian mirror: the only step that needs the network (`make image` builds with --network
# host); a layer that stays cached while only our code changes.
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends nfs-common \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/*.bin /var/log/*.log
# uid/gid 10001: what the operator's pod templates run as (runAsNonRoot needs a numeric USER).
RUN (getent group nasblade || groupadd --system --gid 10001 nasblade) \
 && (getent passwd nasblade || useradd --system --uid 10001 --gid 10001 \
        --home-dir /var/lib/nasblade --create-home --shell /usr/sbin/nologin nasblade) \
 && mkdir -p /run/nasblade /devices && chown 10001:10001 /run/nasblade /devices
COPY --from=deps /opt/nasblade /opt/nasblade
COPY --from=app /stage/ /
ENV PATH=/opt/nasblade/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    NASBLADE_SOFTWARE_BUNDLE=/opt/nasblade/software/blade-${NASBLADE_SOFTWARE_VERSION}.pyz \
    NASBLADE_CSI_CODE=/opt/nasblade/csi
USER 10001:10001
WORKDIR /var/lib/nasblade
ENTRYPOINT ["nasblade"]
CMD ["--help"]
