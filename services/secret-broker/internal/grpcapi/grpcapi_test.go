package grpcapi

import (
	"context"
	"errors"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/testing/protocmp"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/libs/logging"
	"github.com/piggysec/piggy/services/secret-broker/internal/broker"
	"github.com/piggysec/piggy/services/secret-broker/internal/cache"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
)

func TestStatus(t *testing.T) {
	tests := []struct {
		err  error
		code codes.Code
		msg  string
	}{
		{fault.New(fault.InvalidArgument, "r", "bad request"), codes.InvalidArgument, "bad request"},
		{fault.New(fault.FailedPrecondition, "r", "binary secret"), codes.FailedPrecondition, "binary secret"},
		{fault.New(fault.Unauthenticated, "r", "no token"), codes.Unauthenticated, "no token"},
		{fault.New(fault.PermissionDenied, "r", "denied"), codes.PermissionDenied, "denied"},
		{fault.New(fault.NotFound, "r", `secret "x" not found`), codes.NotFound, `secret "x" not found`},
		{fault.Wrap(errors.New("AWS internal text"), fault.Unavailable, "r", "retry"), codes.Unavailable, "retry"},
		{errors.New("unclassified internal detail"), codes.Internal, "internal error"},
	}
	for _, tt := range tests {
		st := status.Convert(Status(tt.err))
		if st.Code() != tt.code || st.Message() != tt.msg {
			t.Errorf("Status(%v) = %v %q, want %v %q (causes stay out)", tt.err, st.Code(), st.Message(), tt.code, tt.msg)
		}
	}
	if Status(nil) != nil {
		t.Error("Status(nil) != nil")
	}
}

func TestBearerToken(t *testing.T) {
	tests := []struct {
		md   metadata.MD
		want string
	}{
		{metadata.Pairs("authorization", "Bearer abc.def"), "abc.def"},
		{metadata.Pairs("authorization", "bearer  abc "), "abc"},
		{metadata.Pairs("authorization", "Basic abc"), ""},
		{metadata.Pairs("authorization", "abc"), ""},
		{metadata.Pairs("authorization", "Bearer a", "authorization", "Bearer b"), ""},
		{metadata.MD{}, ""},
	}
	for _, tt := range tests {
		if got := bearerToken(metadata.NewIncomingContext(context.Background(), tt.md)); got != tt.want {
			t.Errorf("bearerToken(%v) = %q, want %q", tt.md, got, tt.want)
		}
	}
}

type fakeBroker struct {
	got broker.Request
}

func (f *fakeBroker) GetSecrets(_ context.Context, r broker.Request) (broker.Response, error) {
	f.got = r
	return broker.Response{Values: map[string]logging.Secret{"db": "pw"}, Missing: []string{"x"}, SourceName: "team-a/web"}, nil
}
func (f *fakeBroker) Explain(context.Context, broker.ExplainRequest) (broker.Explanation, error) {
	return broker.Explanation{}, nil
}
func (f *fakeBroker) CacheStats() (cache.Stats, cache.Stats) {
	return cache.Stats{Entries: 1, Capacity: 2, Hits: 3}, cache.Stats{Misses: 4}
}

func TestGetSecrets(t *testing.T) {
	fb := &fakeBroker{}
	ctx := metadata.NewIncomingContext(t.Context(), metadata.Pairs("authorization", "Bearer tok"))
	resp, err := New(fb, Options{}).GetSecrets(ctx, &secretbrokerv1.GetSecretsRequest{ContainerUid: "u", Signature: "s", Keys: []string{"db", "x"}})
	if err != nil {
		t.Fatal(err)
	}
	want := &secretbrokerv1.GetSecretsResponse{Values: map[string]string{"db": "pw"}, MissingKeys: []string{"x"}, SourceName: "team-a/web"}
	if diff := cmp.Diff(want, resp, protocmp.Transform()); diff != "" {
		t.Errorf("response (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(broker.Request{Token: "tok", ContainerUID: "u", Signature: "s", Keys: []string{"db", "x"}}, fb.got); diff != "" {
		t.Errorf("broker request (-want +got):\n%s", diff)
	}
	stats, err := New(fb, Options{}).GetCacheStats(t.Context(), &secretbrokerv1.GetCacheStatsRequest{})
	if err != nil || stats.GetSecrets().GetHits() != 3 || stats.GetTokenReviews().GetMisses() != 4 {
		t.Errorf("GetCacheStats = %v, %v", stats, err)
	}
}
