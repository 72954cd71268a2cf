package deploytest

import (
	"os"

	"github.com/piggysec/piggy/libs/kubetest"
)

// kube is the package's shared cluster for tests that leave no state behind
// (server-side dry-run); tests that install cluster-scoped objects start
// their own.
var kube = kubetest.NewShared(kubetest.DefaultOptions(os.Getenv))
