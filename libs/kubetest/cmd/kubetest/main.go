// Command kubetest prepares and runs the Kubernetes API that package
// github.com/piggysec/piggy/libs/kubetest gives to tests.
//
//	kubetest build   build (or find) kube-apiserver and etcd; print their paths
//	kubetest up      start a cluster, print its kubeconfig path, run until ^C
//
// CI runs `kubetest build` before `go test` so that no test pays the
// several-minute cold build inside go test's timeout. The environment
// overrides are those of kubetest.DefaultOptions (PIGGY_KUBE_CACHE_DIR,
// KUBEBUILDER_ASSETS).
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/piggysec/piggy/libs/kubetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Getenv, os.Stdout); err != nil {
		fmt.Fprintln(os.Stderr, "kubetest:", err)
		os.Exit(1)
	}
}

const usage = "usage: kubetest build|up"

func run(ctx context.Context, args []string, getenv func(string) string, stdout io.Writer) error {
	if len(args) != 1 {
		return errors.New(usage)
	}
	opts := kubetest.DefaultOptions(getenv)
	switch args[0] {
	case "build":
		bins, err := kubetest.EnsureBinaries(ctx, opts)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "kube-apiserver: %s\netcd: %s\n", bins.APIServer, bins.Etcd)
		return nil
	case "up":
		c, err := kubetest.Start(ctx, opts)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "kube-apiserver %s ready; logs and data in %s\nexport KUBECONFIG=%s\n(^C stops it)\n",
			c.Host(), c.Dir(), c.KubeconfigPath())
		<-ctx.Done()
		return c.Stop()
	default:
		return errors.New(usage)
	}
}
