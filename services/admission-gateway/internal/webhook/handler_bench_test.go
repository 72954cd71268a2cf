package webhook

import (
	"net/http"
	"testing"
)

// BenchmarkServeHTTP measures one review of a pod with an explicit command
// in-process (no network), the part of the HTTPS benchmark Piggy owns:
//
//	go test -run '^$' -bench ServeHTTP -benchmem ./internal/webhook
func BenchmarkServeHTTP(b *testing.B) {
	h, _ := newHandler(b, nil)
	body := reviewBody(b, "bench", `{"metadata": {"name": "web", "annotations": {"piggysec.com/aws-secret-name": "team/app"}},
		"spec": {"containers": [{"name": "app", "image": "a", "command": ["/app"], "env": [{"name": "A", "value": "piggy:A"}, {"name": "B", "value": "x"}]}]}}`)
	b.ReportAllocs()
	for b.Loop() {
		if rec := post(h, body, "application/json"); rec.Code != http.StatusOK {
			b.Fatal(rec.Code)
		}
	}
}
