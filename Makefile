# Piggy's one Makefile. `make help` lists the targets; CI runs `make test`.
SHELL := bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

BUF_VERSION := 1.75.0
GRPCURL_VERSION := v1.9.4
HELM_VERSION          := v3.22.0
HELM_UNITTEST_VERSION := v1.1.2
TOOLS_DIR   := $(CURDIR)/.cache/tools
BUF         := $(TOOLS_DIR)/buf-$(BUF_VERSION)/node_modules/.bin/buf
GO_MODULES  := libs services/admission-gateway services/image-resolver services/secret-broker services/piggy-env
GO_PACKAGES := $(foreach m,$(GO_MODULES),github.com/piggysec/piggy/$(m)/...)
# The real-cluster tests build kube-apiserver and etcd once (minutes) and
# cache them; give the first run room.
TEST_TIMEOUT ?= 40m

export CGO_ENABLED ?= 1

.PHONY: help
help: ## List the targets.
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  %-16s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

$(BUF):
	@echo "installing buf $(BUF_VERSION) from the npm registry"
	@mkdir -p $(TOOLS_DIR)/buf-$(BUF_VERSION)
	@npm install --silent --no-audit --no-fund --prefix $(TOOLS_DIR)/buf-$(BUF_VERSION) @bufbuild/buf@$(BUF_VERSION)

GRPCURL := $(TOOLS_DIR)/bin/grpcurl
$(GRPCURL):
	@echo "installing grpcurl $(GRPCURL_VERSION) from the Go module proxy"
	@GOBIN=$(TOOLS_DIR)/bin GOWORK=off go install github.com/fullstorydev/grpcurl/cmd/grpcurl@$(GRPCURL_VERSION)

.PHONY: chart-tools
chart-tools: ## Build the pinned helm and helm-unittest into .cache/tools/bin (idempotent).
	@HELM_VERSION=$(HELM_VERSION) HELM_UNITTEST_VERSION=$(HELM_UNITTEST_VERSION) deploy/tools/install.sh

.PHONY: tools
tools: $(BUF) $(GRPCURL) chart-tools ## Install the pinned tools (buf, grpcurl, helm, helm-unittest; protoc plugins come from tools/go.mod).

.PHONY: generate
generate: $(BUF) ## Regenerate libs/gen from proto/ (offline, pinned plugins).
	$(BUF) generate

.PHONY: check-generate
check-generate: generate ## Fail when the committed generated code is stale.
	@if [ -n "$$(git status --porcelain -- libs/gen)" ]; then \
		git status --short -- libs/gen; echo "libs/gen is stale: run make generate and commit"; exit 1; fi

.PHONY: lint
lint: $(BUF) ## go vet, gofmt, buf lint/format/breaking.
	@echo "go vet"; go vet $(GO_PACKAGES)
	@echo "gofmt"; out=$$(gofmt -l $(GO_MODULES) deploy | grep -v '/gen/' || true); \
		if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	@echo "each module builds alone (GOWORK=off)"; for m in $(GO_MODULES); do (cd $$m && GOWORK=off go build ./...) || exit 1; done
	@echo "buf lint"; $(BUF) lint
	@echo "buf format"; $(BUF) format --diff --exit-code
	@if git rev-parse --verify -q main >/dev/null && git ls-tree -d -r --name-only main | grep -qx proto; then \
		echo "buf breaking against main"; $(BUF) breaking --against '.git#branch=main'; \
	else echo "buf breaking: skipped, main has no proto/ yet"; fi

.PHONY: kube-binaries
kube-binaries: ## Build and cache kube-apiserver and etcd for the real-cluster tests (once per version).
	go run ./libs/kubetest/cmd/kubetest build

.PHONY: test
test: lint check-generate kube-binaries chart-tools ## Everything CI runs: lint, generated-code check, every module's tests with -race.
	go test -race -count=1 -timeout $(TEST_TIMEOUT) $(GO_PACKAGES)

# The flake hunt: every test STRESS_COUNT times in a row (go test -count)
# while STRESS_LOAD busy loops compete for the processors, as another build
# would. STRESS_PACKAGES narrows it.
STRESS_COUNT    ?= 20
STRESS_LOAD     ?= 2
STRESS_PACKAGES ?= $(GO_PACKAGES)

.PHONY: stress
stress: kube-binaries chart-tools ## Run the tests STRESS_COUNT (20) times in a row under CPU contention (STRESS_LOAD busy loops); a flake fails it.
	@loads=(); for i in $$(seq $(STRESS_LOAD)); do (while :; do :; done) & loads+=($$!); done; \
		trap 'kill $${loads[@]} 2>/dev/null' EXIT; \
		echo "go test -count=$(STRESS_COUNT) with $(STRESS_LOAD) busy loops"; \
		go test -race -count=$(STRESS_COUNT) -timeout 0 $(STRESS_PACKAGES)

.PHONY: chart-test
chart-test: kube-binaries chart-tools ## Chart, image and compose checks only (libs/deploytest).
	go test -race -timeout $(TEST_TIMEOUT) ./libs/deploytest/

.PHONY: chart-snapshot
chart-snapshot: chart-tools ## Rewrite the chart's helm-unittest snapshot after an intended change.
	.cache/tools/bin/helm-unittest -u --file 'tests/*_test.yaml' charts/piggy

.PHONY: test-short
test-short: chart-tools ## Unit tests only (skips the real-cluster tests).
	go test -race -short $(GO_PACKAGES)

.PHONY: build
build: ## Build the four binaries into bin/.
	@mkdir -p bin
	@for s in admission-gateway image-resolver secret-broker; do \
		echo "bin/$$s"; go build -trimpath -o bin/$$s ./services/$$s; done
	@echo "bin/piggy-env"; CGO_ENABLED=0 go build -trimpath -ldflags='-s -w' -o bin/piggy-env ./services/piggy-env

.PHONY: dev
dev: kube-binaries $(GRPCURL) ## Run the whole stack locally (kube-apiserver, registry, AWS endpoint, services), run the demo, keep running until Ctrl-C.
	go run ./libs/cmd/piggy-dev --grpcurl $(GRPCURL) $(DEV_FLAGS)

.PHONY: demo
demo: kube-binaries ## Run the local stack and the demo once, then stop (exit code says whether it passed).
	go run ./libs/cmd/piggy-dev --once $(DEV_FLAGS)

.PHONY: clean
clean: ## Remove build output (keeps the cluster binary cache).
	rm -rf bin .cache/tools
