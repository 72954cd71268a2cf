package main

import (
	"testing"

	"github.com/piggysec/piggy/libs/proctest"
)

func TestLifecycle(t *testing.T) {
	proctest.TestLifecycle(t, proctest.Service{
		Dir:  ".",
		GRPC: map[string]string{"grpc": "grpc-address"},
	})
}
