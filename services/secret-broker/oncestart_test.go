package main

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	secretbrokerv1 "github.com/piggysec/piggy/libs/gen/piggy/secretbroker/v1"
	"github.com/piggysec/piggy/services/secret-broker/internal/startclaim"
)

// TestOncePerStart is the replay after start: the pod's token stays
// mounted after piggy-env exec'd the application, so the application, a
// `kubectl exec` or an attacker with code execution in the container can
// ask the broker again. Through the real broker, apiserver and AWS
// endpoint, another fetch in the same container start is refused, a retry
// of the launcher's own fetch is answered, and the container is answered
// again on its next start.
func TestOncePerStart(t *testing.T) {
	w := newWorld(t, worldOptions{})
	ctx := t.Context()
	ns := w.namespace("team-o-", "web")
	value := secretValue("once")
	w.seed(ns+"/web", map[string]string{"db": value})

	pod, launcher := w.launchedPod(ns, "web-1", "web", nil, "db")
	tok := w.podToken(pod)
	served := func(t *testing.T, got answer) {
		t.Helper()
		if got.Status != http.StatusOK || got.Values["db"] != value {
			t.Errorf("answer = %+v, want the value", got)
		}
	}
	alreadyFetched := func(t *testing.T, got answer, podName string) {
		t.Helper()
		want := `container "main" of pod ` + ns + "/" + podName + " already received its values for this start"
		if got.Status != http.StatusForbidden || got.Code != int(codes.PermissionDenied) || len(got.Values) != 0 ||
			!strings.Contains(got.Message, want) || !strings.Contains(got.Message, "again on its next start") {
			t.Errorf("answer = %+v, want HTTP 403 %q and no values", got, want)
		}
	}
	served(t, w.getSecrets(t, tok, launcher, "db"))

	t.Run("a second fetch in the same start is refused", func(t *testing.T) {
		// The application (or kubectl exec) runs piggy-env again, or
		// calls the broker itself, with the mounted token.
		alreadyFetched(t, w.getSecrets(t, tok, launcher.nextFetch(), "db"), "web-1")
		// Over mTLS gRPC too.
		client := w.grpcClient(t, w.client.ClientConfig("127.0.0.1"))
		md := metadata.Pairs("authorization", "Bearer "+tok)
		_, err := client.GetSecrets(metadata.NewOutgoingContext(ctx, md), &secretbrokerv1.GetSecretsRequest{
			ContainerUid: launcher.uid, Signature: launcher.signature, Keys: []string{"db"}, FetchId: newFetchID()})
		if status.Code(err) != codes.PermissionDenied || !strings.Contains(err.Error(), "already received its values") {
			t.Errorf("gRPC replay = %v, want PermissionDenied", err)
		}
		// Leaving the fetch id out does not help.
		noID := launcher
		noID.fetchID = ""
		got := w.getSecrets(t, tok, noID, "db")
		alreadyFetched(t, got, "web-1")
		if !strings.Contains(got.Message, "carries no fetch id") {
			t.Errorf("message %q does not say the request has no fetch id", got.Message)
		}
		// A malformed fetch id is refused without being repeated.
		bad := launcher
		bad.fetchID = "not-a-fetch-id"
		if got := w.getSecrets(t, tok, bad, "db"); got.Status != http.StatusBadRequest || strings.Contains(got.Message, bad.fetchID) || len(got.Values) != 0 {
			t.Errorf("malformed fetch id: %+v", got)
		}
	})

	t.Run("a retry with the same fetch id is answered", func(t *testing.T) {
		served(t, w.getSecrets(t, tok, launcher, "db"))
	})

	t.Run("the next start is answered once", func(t *testing.T) {
		if n := w.restart(t, pod); n != 0 {
			t.Fatalf("first status: restart count %d", n) // the kubelet's first report of the start already answered
		}
		alreadyFetched(t, w.getSecrets(t, tok, launcher.nextFetch(), "db"), "web-1")
		if n := w.restart(t, pod); n != 1 {
			t.Fatalf("restart count %d, want 1", n)
		}
		next := launcher.nextFetch()
		served(t, w.getSecrets(t, tok, next, "db"))
		served(t, w.getSecrets(t, tok, next, "db")) // its retry
		alreadyFetched(t, w.getSecrets(t, tok, launcher, "db"), "web-1")
		alreadyFetched(t, w.getSecrets(t, tok, launcher.nextFetch(), "db"), "web-1")
		// The claim of the earlier start is removed.
		gone := func(name string) func(context.Context) (bool, error) {
			return func(ctx context.Context) (bool, error) {
				_, err := w.cs.CoordinationV1().Leases(brokerNS).Get(ctx, name, metav1.GetOptions{})
				return err != nil && strings.Contains(err.Error(), "not found"), nil
			}
		}
		if err := wait.PollUntilContextTimeout(ctx, 50*time.Millisecond, time.Minute, true, gone(startclaim.LeaseName(string(pod.UID), "main", 0))); err != nil {
			t.Errorf("the claim of restart 0 is still there: %v", err)
		}
	})

	t.Run("a restart the kubelet reports after the new start asked is waited for", func(t *testing.T) {
		// piggy-env of restart 2 asks while the status still says 1; the
		// kubelet's update follows.
		next := launcher.nextFetch()
		done := make(chan answer, 1)
		go func() {
			a, err := w.tryGetSecrets(w.https, tok, next, "db")
			if err != nil {
				t.Error(err)
			}
			done <- a
		}()
		time.Sleep(300 * time.Millisecond) // lets the request arrive first; the outcome does not depend on it
		if n := w.restart(t, pod); n != 2 {
			t.Fatalf("restart count %d, want 2", n)
		}
		served(t, <-done)
	})

	t.Run("an unrelated pod is unaffected", func(t *testing.T) {
		other, ctr := w.launchedPod(ns, "web-2", "web", nil, "db")
		otherTok := w.podToken(other)
		served(t, w.getSecrets(t, otherTok, ctr, "db"))
		alreadyFetched(t, w.getSecrets(t, otherTok, ctr.nextFetch(), "db"), "web-2")
		// web-1's refusals named only web-1; web-2's only web-2.
	})

	t.Run("claims are removed with the pod", func(t *testing.T) {
		selector := metav1.ListOptions{LabelSelector: startclaim.PodLabel + "=" + startclaim.PodHash(string(pod.UID))}
		list, err := w.cs.CoordinationV1().Leases(brokerNS).List(ctx, selector)
		if err != nil {
			t.Fatal(err)
		}
		if len(list.Items) == 0 {
			t.Fatal("no claim of web-1 to remove")
		}
		for _, l := range list.Items {
			if h := l.Spec.HolderIdentity; h == nil || strings.Contains(*h, launcher.fetchID) || strings.Contains(l.Name, string(pod.UID)) {
				t.Errorf("lease %s holder %v: the fetch id or pod UID in the clear", l.Name, h)
			}
		}
		if err := w.cs.CoreV1().Pods(ns).Delete(ctx, pod.Name, metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			list, err := w.cs.CoordinationV1().Leases(brokerNS).List(ctx, selector)
			return err == nil && len(list.Items) == 0, nil
		}); err != nil {
			t.Errorf("the claims of the deleted pod are still there: %v", err)
		}
	})

	t.Run("the refusal is logged and counted like any other", func(t *testing.T) {
		rec := w.proc.WaitForRecord(t, 10*time.Second, func(r map[string]any) bool {
			return r["message"] == "Request from [sa="+ns+":web], [pod=web-1] failed" && r["reason"] == "already_fetched"
		})
		if rec["level"] != "warn" || rec["code"] != "permission_denied" || rec["container"] != "main" || rec["secret_name"] != "" {
			t.Errorf("refusal record = %v", rec)
		}
		if metric(w.brokerMetrics(t), "piggy_secret_broker_requests_total", "outcome", "failure", "reason", "already_fetched") == 0 {
			t.Error("no already_fetched in piggy_secret_broker_requests_total")
		}
		if out := w.proc.Output(); strings.Contains(out, launcher.fetchID) {
			t.Error("the broker logged a fetch id")
		}
	})
}

// TestOncePerStartOff: --once-per-start=false answers every request, as
// before, and keeps no claims.
func TestOncePerStartOff(t *testing.T) {
	w := newWorld(t, worldOptions{args: []string{"--once-per-start=false"}})
	ns := w.namespace("team-o-", "web")
	value := secretValue("once-off")
	w.seed(ns+"/web", map[string]string{"db": value})
	pod, ctr := w.launchedPod(ns, "web-1", "web", nil, "db")
	tok := w.podToken(pod)
	for range 2 {
		if got := w.getSecrets(t, tok, ctr.nextFetch(), "db"); got.Status != http.StatusOK || got.Values["db"] != value {
			t.Errorf("answer = %+v", got)
		}
	}
	list, err := w.cs.CoordinationV1().Leases(brokerNS).List(t.Context(), metav1.ListOptions{LabelSelector: startclaim.PodLabel + "=" + startclaim.PodHash(string(pod.UID))})
	if err != nil || len(list.Items) != 0 {
		t.Errorf("claims with --once-per-start=false: %v, %v", list, err)
	}
}
