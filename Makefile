# nasblade: one Makefile for set-up, lint, tests, benchmarks and the local cluster.
#
#   make run     -- the standalone array on this machine (installs what it needs)
#   make test    -- installs what it needs, lints, runs the whole test suite
#   make lint    -- ruff + mypy
#
# Everything heavy that is not the project's own lives outside the checkout, in
# $(NASBLADE_CACHE) (Go builds, Kubernetes binaries, base images, pip cache).

SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3.11
VENV ?= .venv
export NASBLADE_CACHE ?= $(HOME)/.cache/nasblade
APT_LISTS := $(wildcard .ci/apt-packages.txt tools/kube/apt-packages.txt)
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help deps apt venv lint test unit run bench clean

help:
	@echo "make run | test | lint | unit | bench | clean"

# Debian packages: installed only when one is missing, so a warm machine pays nothing.
apt:
	@missing=$$(grep -hv '^\s*#' $(APT_LISTS) | grep -v '^\s*$$' | sort -u | \
	  while read p; do dpkg-query -W -f='$${Status}\n' "$$p" 2>/dev/null | grep -q 'ok installed' || echo "$$p"; done); \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

$(VENV)/.stamp: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	PIP_CACHE_DIR=$(NASBLADE_CACHE)/pip $(VENV)/bin/pip install -q -e '.[operator,test,csi]'
	touch $@

venv: $(VENV)/.stamp

deps: apt venv

lint: venv
	$(VENV)/bin/ruff check blade operator tests tools bench/operator bench/copy bench/nbd bench/csi bench/csi-bound bench/*/run
	$(VENV)/bin/mypy
	PYTHONPATH=blade:operator $(VENV)/bin/lint-imports

# every pure unit test: whatever no marker says needs processes, clusters, a guest or time
UNIT := not (component or tier1 or tier2 or e2e or slow or kernel)
unit: venv
	$(PY) -m pytest -m "$(UNIT)" $(PYTEST_ARGS)

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

run: deps
	$(VENV)/bin/nasblade up $(RUN_ARGS)

bench: deps
	@for b in bench/*; do [ -x "$$b" ] && [ -f "$$b" ] && { echo "== $$b"; PATH=$(abspath $(VENV))/bin:$$PATH "$$b"; }; done

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache

# --- cluster ---
# Local Kubernetes for the tests (tools/kube, docs/testing.md). Heavy things are cached in
# $(NASBLADE_CACHE) keyed by version; every target is idempotent and quick when warm.
CLUSTER := python3 tools/kube/nbcluster.py
.PHONY: cluster-deps cluster-build cluster-images cluster-up cluster-down cluster-reset \
        cluster-status cluster-env cluster-load-image tier1-up tier1-down tier2-up \
        tier2-down test-k8s

cluster-deps:
	tools/kube/install-deps.sh

cluster-build: cluster-deps
	tools/kube/build.sh all

cluster-images: cluster-build
	tools/kube/images.sh build all

tier1-up: cluster-deps
	tools/kube/build.sh tier1
	$(CLUSTER) tier1-up

tier1-down:
	$(CLUSTER) tier1-down

tier2-up: cluster-images
	$(CLUSTER) tier2-up

tier2-down:
	$(CLUSTER) tier2-down

# end-to-end cluster: kind when `kind` and a kindest/node image are present, else local tier 2
cluster-up: cluster-images
	$(CLUSTER) up

cluster-down:
	$(CLUSTER) down

cluster-reset:
	$(CLUSTER) tier2-reset

cluster-status:
	@$(CLUSTER) status

# print the environment for a shell: eval "$$(make -s cluster-env)"
cluster-env:
	@$(CLUSTER) env

# copy locally built docker images into the cluster: make cluster-load-image IMAGE="a:1 b:2"
cluster-load-image:
	tools/kube/images.sh load-docker $(IMAGE)

test-k8s: venv cluster-up
	$(PY) -m pytest tests/k8s $(PYTEST_ARGS)

# `make test` needs the binaries, images and the tier-2 cluster before pytest starts
# (pytest-timeout would otherwise count a cold build against the first test).
test: cluster-up

# --- kernel clients ---
# The root tree of the User-Mode Linux guest that runs Linux's NFS and NBD clients
# (tests/kernel, docs/testing.md), built once in $(NASBLADE_CACHE)/kernel and keyed by
# tests/kernel/guest.env's version: a warm machine pays nothing.
.PHONY: kernel-guest
kernel-guest: apt
	tests/kernel/build-guest.sh >/dev/null

# `make test` runs tests/kernel: the tree is built before pytest starts
test: kernel-guest

# --- image / chart / e2e ---
# One image for every role (Dockerfile), the NFS client image of the end-to-end tests, the Helm
# chart and the end-to-end suite (docs/install.md). The base is the locally built one
# (tools/kube/versions.env); nothing is pulled. Images are saved as tars in
# $(NASBLADE_CACHE)/images and imported into the cluster (kind, else local containerd).
NASBLADE_VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
IMAGE ?= nasblade/nasblade:$(NASBLADE_VERSION)
CLIENT_IMAGE ?= nasblade/nfs-client:$(NASBLADE_VERSION)
LOCAL_BASE_IMAGE := $(shell sed -n 's/^BASE_IMAGE=//p' tools/kube/versions.env)
HELM := $(NASBLADE_CACHE)/bin/helm-$(shell sed -n 's/^HELM_VERSION=//p' tools/kube/versions.env)/helm
IMAGE_TOOL := $(PY) tests/e2e/imagetool.py
.PHONY: wheels image image-build client-image images image-load chart-lint test-chart test-e2e demo demo-clean

build/wheels/.stamp: pyproject.toml
	mkdir -p build/wheels
	PIP_CACHE_DIR=$(NASBLADE_CACHE)/pip $(VENV)/bin/pip wheel -q -w build/wheels '.[operator,csi]' 'setuptools>=68' wheel
	rm -f build/wheels/nasblade-*.whl
	touch $@

wheels: venv build/wheels/.stamp

# the CSI driver's protos (CSI spec, kubelet plugin registration), pinned in tools/kube/csi.sh:
# the image compiles them into its Python code (nothing generated is committed)
build/proto/.stamp: tools/kube/csi.sh
	mkdir -p build/proto
	cp "$$(tools/kube/csi.sh spec)" build/proto/csi.proto
	cp "$$(tools/kube/csi.sh registration)" build/proto/pluginregistration.proto
	touch $@

# build the image and, when a cluster runs (kind or the local one), load it into it
image: image-build
	$(IMAGE_TOOL) load --if-running $(IMAGE)

image-build: wheels build/proto/.stamp
	tools/kube/images.sh build base
	$(IMAGE_TOOL) build --image $(IMAGE) --base $(LOCAL_BASE_IMAGE) --version $(NASBLADE_VERSION)

client-image: venv
	tools/kube/images.sh build base
	$(IMAGE_TOOL) build-client --image $(CLIENT_IMAGE) --base $(LOCAL_BASE_IMAGE)

images: image-build client-image

# import both images into the end-to-end cluster (kind when it runs, else local containerd)
image-load: images
	$(IMAGE_TOOL) load $(IMAGE) $(CLIENT_IMAGE)

chart-lint:
	$(HELM) lint --strict charts/nasblade

test-chart: venv
	$(PY) -m pytest tests/chart $(PYTEST_ARGS)

test-e2e: venv cluster-up image-load
	$(PY) -m pytest tests/e2e $(PYTEST_ARGS)

# bring up the cluster, build + load the images, install the chart and the examples
demo: deps cluster-up image-load
	$(PY) tests/e2e/demo.py --image $(IMAGE) $(DEMO_ARGS)

demo-clean: venv
	$(PY) tests/e2e/demo.py --image $(IMAGE) --delete

# the end-to-end suite needs the images in the cluster before pytest starts
test: image-load

# --- kind ---
# The end-to-end suite on a two-node kind cluster whose node image is built here, without a
# registry (tools/kube/kind.sh, docs/testing.md "kind"): kind, crictl and kubeadm from the Go
# module proxy, a debootstrap'd node base, the control-plane images from build.sh's binaries.
# Not part of `make test` (see docs/testing.md for its cost).
KIND_VERSION := $(shell sed -n 's/^KIND_VERSION=//p' tools/kube/versions.env)
KIND_NODE_IMAGE := $(shell sed -n 's/^KIND_NODE_IMAGE=//p' tools/kube/versions.env)
# kind runs on a docker daemon of its own (tools/kube/kind.sh dockerd: the shared one cannot
# start --privileged containers here)
KIND_DOCKER_HOST := unix:///run/nbkind-docker.sock
KIND_ENV := PATH=$(NASBLADE_CACHE)/bin/kind-$(KIND_VERSION):$$PATH NASBLADE_KIND_IMAGE=$(KIND_NODE_IMAGE) \
	DOCKER_HOST=$(KIND_DOCKER_HOST)
KIND_KUBECONFIG := $(NASBLADE_CACHE)/state/kind.kubeconfig
.PHONY: kind-build kind-node-image kind-up kind-down e2e-kind

kind-build: cluster-build
	tools/kube/kind.sh build

kind-node-image: kind-build cluster-images
	tools/kube/kind.sh node-image

kind-up: kind-node-image
	$(KIND_ENV) $(CLUSTER) kind-up

kind-down:
	$(KIND_ENV) $(CLUSTER) kind-down

# build the images in kind's docker daemon, create the cluster, run the whole e2e suite (its
# fixtures `kind load` the images and install the chart), delete the cluster -- also when a
# step fails
e2e-kind: venv kind-node-image
	DOCKER_HOST=$(KIND_DOCKER_HOST) $(MAKE) images
	$(KIND_ENV) $(CLUSTER) kind-up
	$(KIND_ENV) KUBECONFIG=$(KIND_KUBECONFIG) $(PY) -m pytest tests/e2e $(PYTEST_ARGS); \
	  rc=$$?; $(KIND_ENV) $(CLUSTER) kind-down; exit $$rc
