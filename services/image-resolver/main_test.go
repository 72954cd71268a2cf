package main

import (
	"testing"

	imageresolverv1 "github.com/piggysec/piggy/libs/gen/piggy/imageresolver/v1"
	"github.com/piggysec/piggy/libs/proctest"
)

func TestLifecycle(t *testing.T) {
	proctest.TestLifecycle(t, proctest.Service{
		Dir:  ".",
		GRPC: map[string]string{"grpc": "grpc-address"},
		Callers: map[string]map[string]proctest.Caller{"grpc": {
			imageresolverv1.ImageResolverService_ResolveImage_FullMethodName:  proctest.Peer,
			imageresolverv1.ImageResolverService_ExplainImage_FullMethodName:  proctest.Operator,
			imageresolverv1.ImageResolverService_GetCacheStats_FullMethodName: proctest.Operator,
		}},
	})
}
