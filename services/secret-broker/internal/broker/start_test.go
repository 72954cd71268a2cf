package broker

import (
	"context"
	"testing"

	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/startclaim"
)

// fakeStarts refuses every fetch id but "first" and records the starts.
type fakeStarts struct{ seen []startclaim.Start }

func (f *fakeStarts) Claim(_ context.Context, s startclaim.Start, fetchID string) error {
	f.seen = append(f.seen, s)
	if fetchID != "first" {
		return fault.New(fault.PermissionDenied, "already_fetched", "already received its values for this start")
	}
	return nil
}

// A start that was answered before is refused before the source is read
// from AWS, and a request the grant refuses claims no start.
func TestStartIsClaimedBeforeAWS(t *testing.T) {
	starts := &fakeStarts{}
	s := newSetup(t, func(o *Options, _ *fakeChecker) { o.Starts = starts })
	ctx := t.Context()
	r := req("pod:team-a:web:web-1", "db")
	r.FetchID = "first"
	if _, err := s.b.GetSecrets(ctx, r); err != nil {
		t.Fatal(err)
	}
	reads := s.fetcher.reads.Load()
	r.FetchID = "second"
	if _, err := s.b.GetSecrets(ctx, r); fault.ReasonOf(err) != "already_fetched" {
		t.Fatalf("second fetch = %v", err)
	}
	if got := s.fetcher.reads.Load(); got != reads {
		t.Errorf("a refused start made %d AWS reads", got-reads)
	}
	notGranted := req("pod:team-a:web:web-1", "other-key")
	notGranted.FetchID = "third"
	if _, err := s.b.GetSecrets(ctx, notGranted); fault.ReasonOf(err) != "key_not_granted" {
		t.Errorf("key not granted = %v", err)
	}
	if len(starts.seen) != 2 || starts.seen[0].Container != "app" || starts.seen[0].PodName != "web-1" {
		t.Errorf("claimed starts = %+v", starts.seen)
	}
}
