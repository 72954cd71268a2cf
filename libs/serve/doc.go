// Package serve runs Piggy's HTTP and gRPC servers with production defaults
// (timeouts, size limits, panic recovery, OpenTelemetry instrumentation,
// gRPC health and reflection) and shuts them down gracefully, within a
// bound, when their context ends.
package serve
