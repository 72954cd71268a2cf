#!/usr/bin/env bash
# Installs the pinned chart tools into .cache/tools/bin (gitignored):
#
#   helm           v3.22.0, with Kubernetes 1.37 capabilities (ldflags below;
#                  without them .Capabilities.KubeVersion is 1.20)
#   helm-unittest  v1.1.2
#
# Both are built from the Go module proxy through the tools modules next to
# this script (go.mod/go.sum pin every dependency; "tool" directives name the
# commands). Idempotent: a tool whose versioned binary exists and answers with
# the pinned version is not rebuilt. Usage:
#
#   deploy/tools/install.sh              # both
#   deploy/tools/install.sh helm         # one
#   PIGGY_TOOLS_DIR=/elsewhere deploy/tools/install.sh
#
# The Go tests in libs/deploytest find the binaries in .cache/tools/bin or
# through PIGGY_HELM / PIGGY_HELM_UNITTEST.
set -euo pipefail

# The Makefile may pass these; they must match the tools modules (checked below).
HELM_VERSION="${HELM_VERSION:-v3.22.0}"
HELM_UNITTEST_VERSION="${HELM_UNITTEST_VERSION:-v1.1.2}"
KUBE_MAJOR=1
KUBE_MINOR=37

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
tools="${PIGGY_TOOLS_DIR:-$root/.cache/tools}"
bin="$tools/bin"
mkdir -p "$bin"

# The tools modules are not in go.work; -mod=readonly makes a go.sum that
# does not match fail instead of being rewritten.
export GOWORK=off GOFLAGS="-mod=readonly -buildvcs=false" CGO_ENABLED=0

# link points bin/<name> at the versioned binary.
link() { ln -sfn "$2" "$bin/$1"; }

install_helm() {
	local dir="$tools/helm-$HELM_VERSION" out
	out="$dir/helm"
	if [[ -x "$out" ]] && [[ "$("$out" version --template '{{.Version}}' 2>/dev/null)" == "$HELM_VERSION" ]]; then
		echo "helm $HELM_VERSION: already installed ($out)"
	else
		echo "helm $HELM_VERSION: building from the Go module proxy (a few minutes on 2 cores)"
		local start=$SECONDS
		mkdir -p "$dir"
		go build -C "$here/helm" -trimpath -o "$out.tmp" -ldflags "-s -w \
			-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION \
			-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$KUBE_MAJOR \
			-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$KUBE_MINOR \
			-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=$KUBE_MAJOR \
			-X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$KUBE_MINOR" \
			helm.sh/helm/v3/cmd/helm
		mv "$out.tmp" "$out"
		echo "helm $HELM_VERSION: built in $((SECONDS - start))s"
	fi
	link helm "$out"
}

install_helm_unittest() {
	local dir="$tools/helm-unittest-$HELM_UNITTEST_VERSION" out
	out="$dir/helm-unittest"
	# helm-unittest has no version flag worth trusting (it prints the
	# plugin.yaml version); the versioned directory is the pin.
	if [[ -x "$out" ]]; then
		echo "helm-unittest $HELM_UNITTEST_VERSION: already installed ($out)"
	else
		echo "helm-unittest $HELM_UNITTEST_VERSION: building from the Go module proxy"
		local start=$SECONDS
		mkdir -p "$dir"
		go build -C "$here/helm-unittest" -trimpath -o "$out.tmp" -ldflags "-s -w \
			-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=$KUBE_MAJOR \
			-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$KUBE_MINOR" \
			github.com/helm-unittest/helm-unittest/cmd/helm-unittest
		mv "$out.tmp" "$out"
		echo "helm-unittest $HELM_UNITTEST_VERSION: built in $((SECONDS - start))s"
	fi
	link helm-unittest "$out"
}

# Pinned versions must match the tools modules; a bump edits both.
check_pins() {
	grep -q "helm.sh/helm/v3 $HELM_VERSION\b" "$here/helm/go.mod" ||
		{ echo "deploy/tools/helm/go.mod does not require helm $HELM_VERSION" >&2; exit 1; }
	grep -q "github.com/helm-unittest/helm-unittest $HELM_UNITTEST_VERSION\b" "$here/helm-unittest/go.mod" ||
		{ echo "deploy/tools/helm-unittest/go.mod does not require helm-unittest $HELM_UNITTEST_VERSION" >&2; exit 1; }
}

check_pins
case "${1:-all}" in
helm) install_helm ;;
helm-unittest) install_helm_unittest ;;
all)
	install_helm
	install_helm_unittest
	;;
*)
	echo "usage: $0 [all|helm|helm-unittest]" >&2
	exit 2
	;;
esac
