// Command piggy-dev runs the whole Piggy system locally on real parts (see
// package devstack) and a demo, then keeps it running until Ctrl-C, or
// exits after the demo with --once. `make dev` runs it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/piggysec/piggy/libs/devstack"
	"github.com/piggysec/piggy/libs/kubetest"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Getenv)
	stop()
	if err != nil && !errors.Is(err, flag.ErrHelp) {
		fmt.Fprintf(os.Stderr, "piggy-dev: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string, stdout io.Writer, getenv func(string) string) error {
	fs := flag.NewFlagSet("piggy-dev", flag.ContinueOnError)
	var (
		opts    = devstack.Options{Ports: devstack.DefaultPorts, Out: stdout}
		once    bool
		grpcurl string
	)
	fs.StringVar(&opts.Dir, "dir", ".cache/dev", "directory for certificates, binaries, logs and pod volumes")
	fs.StringVar(&opts.RepoRoot, "repo", ".", "the Piggy checkout to build")
	fs.BoolVar(&once, "once", false, "run the demo and exit (non-zero if it fails)")
	fs.BoolVar(&opts.RealAWS, "real-aws", false, "use real AWS (standard credential chain and endpoints) instead of the local endpoint")
	fs.StringVar(&opts.Region, "region", "us-east-1", "AWS region")
	fs.StringVar(&grpcurl, "grpcurl", ".cache/tools/bin/grpcurl", "grpcurl binary named in the printed commands")
	fs.IntVar(&opts.Ports.GatewayHTTPS, "gateway-port", opts.Ports.GatewayHTTPS, "admission-gateway webhook port (0: any free port)")
	fs.IntVar(&opts.Ports.GatewayGRPC, "gateway-grpc-port", opts.Ports.GatewayGRPC, "admission-gateway gRPC port")
	fs.IntVar(&opts.Ports.ResolverGRPC, "resolver-grpc-port", opts.Ports.ResolverGRPC, "image-resolver gRPC port")
	fs.IntVar(&opts.Ports.BrokerHTTPS, "broker-port", opts.Ports.BrokerHTTPS, "secret-broker HTTPS port")
	fs.IntVar(&opts.Ports.BrokerGRPC, "broker-grpc-port", opts.Ports.BrokerGRPC, "secret-broker gRPC port")
	fs.IntVar(&opts.Ports.Registry, "registry-port", opts.Ports.Registry, "registry port")
	fs.IntVar(&opts.Ports.AWS, "aws-port", opts.Ports.AWS, "AWS-compatible endpoint port")
	if err := fs.Parse(args); err != nil {
		return err
	}
	var err error
	if opts.Dir, err = filepath.Abs(opts.Dir); err != nil {
		return err
	}
	if opts.RepoRoot, err = filepath.Abs(opts.RepoRoot); err != nil {
		return err
	}
	if err := os.RemoveAll(filepath.Join(opts.Dir, "pods")); err != nil {
		return err
	}
	opts.Kube = kubetest.DefaultOptions(getenv)
	opts.Kube.Progress = stdout
	opts.Kube.WorkDir = filepath.Join(opts.Dir, "cluster")
	if err := os.MkdirAll(opts.Kube.WorkDir, 0o755); err != nil {
		return err
	}

	fmt.Fprintln(stdout, "Starting Piggy locally (the first run builds kube-apiserver and etcd: several minutes)")
	start := time.Now()
	stack, err := devstack.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer func() {
		fmt.Fprintln(stdout, "\nStopping...")
		if err := stack.Stop(); err != nil {
			fmt.Fprintf(stdout, "stop: %v\n", err)
		}
	}()
	fmt.Fprintf(stdout, "  stack up in %s\n", time.Since(start).Round(100*time.Millisecond))

	if _, err := stack.Demo(ctx); err != nil {
		return fmt.Errorf("demo: %w", err)
	}
	fmt.Fprintln(stdout, "  demo passed")
	if once {
		return nil
	}
	if abs, err := filepath.Abs(grpcurl); err == nil {
		grpcurl = abs
	}
	stack.PrintUsage(stdout, grpcurl)
	<-ctx.Done()
	return nil
}
