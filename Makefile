# dynaps developer targets. `make help` lists them.
# Every set-up step lives here so that a fresh machine (and CI) needs nothing but python3 and go.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# Test processes of `make test` (pytest-xdist): most of the suite waits on real processes and
# clusters, so two workers cut its wall time even on 2 cores. The container tests run first, on
# their own: there is one real node per machine, and xdist's groups do not keep its tests together
# under pytest 9 (they are spread over the workers, and the second node waits for the first).
TEST_WORKERS ?= 2
# Written by the container tests when every one of them ran and passed; the second phase then
# skips the images' install tests, which the real images proved (tests/containers/proof.py).
CONTAINERS_STAMP := $(CURDIR)/.containers-passed

.DEFAULT_GOAL := help
.PHONY: help quickstart test test-fast lint bench k8s-binaries node-images clean

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $@

venv: $(STAMP) ## Create .venv with dynaps and every test dependency

quickstart: $(STAMP) ## Run the main job: matrix factorisation on a local embedded cluster
	$(VENV)/bin/dynaps run examples/mf.yaml

k8s-binaries: ## Provide the Kubernetes test binaries (control plane, kubectl, helm, node, scheduler-plugins; cached)
	scripts/k8s-binaries.sh

node-images: k8s-binaries ## Build the images the real test node runs (apt packages, base image, Dockerfiles; cached)
	scripts/node-images.sh

test: $(STAMP) k8s-binaries node-images ## Run the whole test suite (unit, integration, e2e, containers) and the static checks
	$(MAKE) lint
	rm -f $(CONTAINERS_STAMP)
	DYNAPS_CONTAINERS_STAMP=$(CONTAINERS_STAMP) $(PY) -m pytest -m containers
	DYNAPS_CONTAINERS_STAMP=$(CONTAINERS_STAMP) $(PY) -m pytest -n $(TEST_WORKERS) -m "not containers"

test-fast: $(STAMP) ## Unit and integration tests only (no control plane)
	$(PY) -m pytest -m "not e2e"

lint: $(STAMP) ## ruff, mypy --strict, the import-layer contracts and shellcheck
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy --strict bench tests
	$(VENV)/bin/lint-imports
	$(VENV)/bin/shellcheck scripts/*.sh bench/*.sh .ci/run

bench: $(STAMP) ## Run the micro benchmark and the application benchmark
	$(PY) bench/micro.py
	$(PY) bench/apps.py

clean: ## Remove the virtual environment and caches
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(CONTAINERS_STAMP)

# ---- operator, chart and images (docs/operator.md) --------------------------------------------
.PHONY: crds chart-lint images kind-up kind-down bench-operator

crds: $(STAMP) ## Regenerate crds/ and the chart's copy from the pydantic models
	$(PY) -m dynaps_operator.crdgen

chart-lint: $(STAMP) k8s-binaries ## helm lint the operator chart and check that its CRD is current
	"$$(scripts/k8s-binaries.sh --print-dir)/helm" lint --strict charts/dynaps-operator
	$(PY) -m dynaps_operator.crdgen --check

images: ## Build the runtime and operator images with your Docker (scripts/images.sh)
	scripts/images.sh

kind-up: ## Create a kind cluster, load the images, helm install the operator (needs Docker, kind)
	scripts/kind-up.sh

kind-down: ## Delete the kind cluster
	scripts/kind-down.sh

bench-operator: $(STAMP) k8s-binaries ## Operator latency (apply to pods) and memory with 20 jobs
	$(PY) bench/operator_bench.py
