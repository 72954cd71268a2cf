package kubeclient

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	authv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TestTokenReviewsHaveTheirOwnLimiter exhausts the TokenReview client's
// rate limiter and shows that pod reads, through the other client, still
// go out, and that further TokenReviews are refused by client-go without
// a request rather than queued.
func TestTokenReviewsHaveTheirOwnLimiter(t *testing.T) {
	var reviews, pods atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch {
		case strings.HasSuffix(r.URL.Path, "/tokenreviews"):
			reviews.Add(1)
			json.NewEncoder(w).Encode(authv1.TokenReview{TypeMeta: metav1.TypeMeta{Kind: "TokenReview", APIVersion: "authentication.k8s.io/v1"}})
		case strings.Contains(r.URL.Path, "/pods/"):
			pods.Add(1)
			json.NewEncoder(w).Encode(corev1.Pod{TypeMeta: metav1.TypeMeta{Kind: "Pod", APIVersion: "v1"}, ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "ns"}})
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	kubeconfig := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(kubeconfig, []byte(fmt.Sprintf(`apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: %q}}]
users: [{name: u, user: {token: "t"}}]
contexts: [{name: c, context: {cluster: c, user: u}}]
current-context: c
`, srv.URL)), 0o600); err != nil {
		t.Fatal(err)
	}
	cs, err := New(Options{Kubeconfig: kubeconfig, QPS: 1000, Burst: 1000, UserAgent: "test"})
	if err != nil {
		t.Fatal(err)
	}
	// One review per hour after the first.
	tr, err := NewTokenReviews(Options{Kubeconfig: kubeconfig, QPS: 1.0 / 3600, Burst: 1, UserAgent: "test"})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := tr.Create(ctx, &authv1.TokenReview{Spec: authv1.TokenReviewSpec{Token: "x"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The TokenReview limiter is empty: client-go refuses at once when the
	// wait would pass the deadline.
	if _, err := tr.Create(ctx, &authv1.TokenReview{Spec: authv1.TokenReviewSpec{Token: "y"}}, metav1.CreateOptions{}); err == nil {
		t.Fatal("a second TokenReview went out past the TokenReview client's burst")
	}
	for range 20 {
		if _, err := cs.CoreV1().Pods("ns").Get(ctx, "p", metav1.GetOptions{}); err != nil {
			t.Fatalf("pod read while TokenReviews are throttled: %v", err)
		}
	}
	if reviews.Load() != 1 || pods.Load() != 20 {
		t.Errorf("apiserver saw %d TokenReviews and %d pod reads, want 1 and 20", reviews.Load(), pods.Load())
	}
}
