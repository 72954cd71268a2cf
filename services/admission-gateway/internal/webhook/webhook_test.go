package webhook

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/metric/noop"
	jsonpatch "gopkg.in/evanphx/json-patch.v4"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

const broker = "https://broker.piggy.svc:8443"

type noImages struct{}

func (noImages) Resolve(context.Context, mutate.ImageLookup) (mutate.ImageConfig, error) {
	return mutate.ImageConfig{Entrypoint: []string{"/entry"}}, nil
}

type noEnv struct{}

func (noEnv) ConfigMap(context.Context, string, string) (map[string]string, error) {
	return nil, mutate.ErrNotFound
}
func (noEnv) Secret(context.Context, string, string) (map[string]string, error) {
	return nil, mutate.ErrNotFound
}

func newHandler(t testing.TB, m Mutator) (*Handler, *bytes.Buffer) {
	t.Helper()
	var logs bytes.Buffer
	if m == nil {
		m = mutate.New(mutate.Config{
			AllowedAddresses: []string{broker},
			Defaults:         podsettings.Defaults{Values: map[string]string{"piggy-address": broker}},
			EnvImage:         "piggy-env:test",
		}, noImages{}, noEnv{})
	}
	h, err := New(m, slog.New(slog.NewJSONHandler(&logs, nil)), noop.NewMeterProvider().Meter("t"))
	if err != nil {
		t.Fatal(err)
	}
	return h, &logs
}

func reviewBody(t testing.TB, uid, pod string) []byte {
	t.Helper()
	return []byte(fmt.Sprintf(`{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
		"request": {"uid": %q, "kind": {"group": "", "version": "v1", "kind": "Pod"}, "resource": {"group": "", "version": "v1", "resource": "pods"},
			"namespace": "team", "operation": "CREATE", "object": %s}}`, uid, pod))
}

func post(h http.Handler, body []byte, contentType string) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, "/mutate", bytes.NewReader(body))
	req.Header.Set("Content-Type", contentType)
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, req)
	return rec
}

func decode(t testing.TB, rec *httptest.ResponseRecorder) *admissionv1.AdmissionResponse {
	t.Helper()
	if rec.Code != http.StatusOK {
		t.Fatalf("status %d: %s", rec.Code, rec.Body)
	}
	var out admissionv1.AdmissionReview
	if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil {
		t.Fatalf("response is not an AdmissionReview: %v: %s", err, rec.Body)
	}
	if out.APIVersion != "admission.k8s.io/v1" || out.Kind != "AdmissionReview" || out.Response == nil {
		t.Fatalf("response = %s", rec.Body)
	}
	return out.Response
}

const mutatedPod = `{"metadata": {"name": "web"}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`

func TestMutatedPodGetsPatchAndLogLine(t *testing.T) {
	h, logs := newHandler(t, nil)
	resp := decode(t, post(h, reviewBody(t, "uid-1", mutatedPod), "application/json"))
	if !resp.Allowed || resp.UID != "uid-1" || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch || len(resp.Patch) == 0 {
		t.Fatalf("response = %+v", resp)
	}
	var line map[string]any
	if err := json.Unmarshal(logs.Bytes(), &line); err != nil {
		t.Fatalf("log: %v: %s", err, logs)
	}
	msg, _ := line["msg"].(string)
	if !strings.HasPrefix(msg, "Pod 'web' has been mutated (took ") || line["namespace"] != "team" || line["pod_name"] != "web" {
		t.Errorf("log line = %v", line)
	}
}

func TestOwnerLogLine(t *testing.T) {
	h, logs := newHandler(t, nil)
	pod := `{"metadata": {"generateName": "web-5d9c-", "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-5d9c", "uid": "u", "controller": true}]},
		"spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`
	decode(t, post(h, reviewBody(t, "u", pod), "application/json"))
	if !strings.Contains(logs.String(), `Pod of ReplicaSet 'web-5d9c' has been mutated (took `) || !strings.Contains(logs.String(), `"owner":"web-5d9c"`) {
		t.Errorf("log = %s", logs)
	}
}

func TestNoOpIsAValidAllowedReview(t *testing.T) {
	h, _ := newHandler(t, nil)
	tests := map[string][]byte{
		"pod without references": reviewBody(t, "u1", `{"metadata": {"name": "p"}, "spec": {"containers": [{"name": "c", "image": "i"}]}}`),
		"not a pod": []byte(`{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u2",
			"kind": {"group": "apps", "version": "v1", "kind": "Deployment"}, "operation": "CREATE", "object": {}}}`),
		"update": []byte(`{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": "u3",
			"kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "UPDATE", "object": {}}}`),
	}
	for name, body := range tests {
		t.Run(name, func(t *testing.T) {
			resp := decode(t, post(h, body, "application/json"))
			if !resp.Allowed || resp.UID == "" || len(resp.Patch) != 0 {
				t.Errorf("response = %+v, want allowed without patch, with the UID", resp)
			}
		})
	}
}

func TestDeniedCarriesMessage(t *testing.T) {
	h, _ := newHandler(t, nil)
	pod := `{"metadata": {"name": "web", "annotations": {"piggysec.com/piggy-address": "https://elsewhere"}}, "spec": {"containers": [{"name": "app", "image": "a", "command": ["/a"], "env": [{"name": "A", "value": "piggy:A"}]}]}}`
	resp := decode(t, post(h, reviewBody(t, "u", pod), "application/json"))
	if resp.Allowed || resp.Result == nil || resp.Result.Code != http.StatusForbidden || !strings.Contains(resp.Result.Message, "not an allowed broker address") {
		t.Errorf("response = %+v", resp)
	}
}

func TestBadRequests(t *testing.T) {
	h, _ := newHandler(t, nil)
	tests := []struct {
		name        string
		method      string
		contentType string
		body        []byte
		want        int
	}{
		{"GET", http.MethodGet, "application/json", nil, http.StatusMethodNotAllowed},
		{"wrong content type", http.MethodPost, "text/plain", reviewBody(t, "u", mutatedPod), http.StatusUnsupportedMediaType},
		{"not JSON", http.MethodPost, "application/json", []byte("{nope"), http.StatusBadRequest},
		{"no request", http.MethodPost, "application/json", []byte(`{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}`), http.StatusBadRequest},
		{"v1beta1", http.MethodPost, "application/json", []byte(`{"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {"uid": "u"}}`), http.StatusBadRequest},
		{"too large", http.MethodPost, "application/json", append([]byte(`{"apiVersion": "`), bytes.Repeat([]byte("a"), MaxBodyBytes+1)...), http.StatusRequestEntityTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := httptest.NewRequest(tt.method, "/mutate", bytes.NewReader(tt.body))
			req.Header.Set("Content-Type", tt.contentType)
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, req)
			if rec.Code != tt.want {
				t.Errorf("status = %d, want %d: %s", rec.Code, tt.want, rec.Body)
			}
		})
	}
}

func TestUndecodablePodIsDenied(t *testing.T) {
	h, _ := newHandler(t, nil)
	resp := decode(t, post(h, reviewBody(t, "u", `{"spec": {"containers": "not-a-list"}}`), "application/json"))
	if resp.Allowed || resp.Result.Code != http.StatusBadRequest || resp.UID != "u" {
		t.Errorf("response = %+v", resp)
	}
}

type panicking struct{}

func (panicking) Mutate(context.Context, *corev1.Pod, string) mutate.Outcome { panic("boom") }

func TestPanicBecomesDenialWithUID(t *testing.T) {
	h, logs := newHandler(t, panicking{})
	resp := decode(t, post(h, reviewBody(t, "uid-panic", mutatedPod), "application/json"))
	if resp.Allowed || resp.UID != "uid-panic" || resp.Result.Code != http.StatusInternalServerError {
		t.Errorf("response = %+v", resp)
	}
	if !strings.Contains(logs.String(), "panic while reviewing a pod") {
		t.Errorf("panic not logged: %s", logs)
	}
}

func TestConcurrentReviews(t *testing.T) {
	h, _ := newHandler(t, nil)
	var wg sync.WaitGroup
	errs := make(chan string, 64)
	for i := range 64 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			uid := fmt.Sprintf("uid-%d", i)
			rec := post(h, reviewBody(t, uid, mutatedPod), "application/json")
			var out admissionv1.AdmissionReview
			if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || string(out.Response.UID) != uid || !out.Response.Allowed || len(out.Response.Patch) == 0 {
				errs <- fmt.Sprintf("%s: %s", uid, rec.Body)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestEncodeReviewMatchesEncodingJSON(t *testing.T) {
	pt := admissionv1.PatchTypeJSONPatch
	tests := map[string]*admissionv1.AdmissionResponse{
		"mutated": {UID: "u-1", Allowed: true, Patch: []byte(`[{"op":"add","path":"/a","value":"<&>"}]`), PatchType: &pt,
			Warnings: []string{`piggy: container "app" has no command`, "ünï \u2028 \x01"}},
		"unchanged":        {UID: "u-2", Allowed: true},
		"empty patch":      {UID: "u-3", Allowed: true, Patch: []byte{}},
		"denied":           deny(&request{UID: `u-"4"`}, http.StatusForbidden, "piggy: \"x\" is not allowed"),
		"audit annotation": {UID: "u-5", Allowed: true, AuditAnnotations: map[string]string{"k": "v"}},
	}
	for name, resp := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := encodeReview(nil, "admission.k8s.io/v1", "AdmissionReview", resp)
			if err != nil {
				t.Fatal(err)
			}
			want, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"}, Response: resp})
			if err != nil {
				t.Fatal(err)
			}
			var gotDoc, wantDoc any
			if err := json.Unmarshal(got, &gotDoc); err != nil {
				t.Fatalf("invalid JSON: %v: %s", err, got)
			}
			if err := json.Unmarshal(want, &wantDoc); err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(wantDoc, gotDoc); diff != "" {
				t.Errorf("encodeReview differs from encoding/json (-want +got):\n%s", diff)
			}
		})
	}
}

// FuzzReview feeds arbitrary pods through the handler: it must always
// answer, never panic, and an allowed patch must apply to the pod and give
// a pod that decodes.
func FuzzReview(f *testing.F) {
	f.Add([]byte(mutatedPod))
	f.Add([]byte(`{"metadata": {"annotations": {"piggysec.com/standalone": "true", "piggysec.com/aws-secret-name": "x"}}, "spec": {"initContainers": [{"name": "i", "env": [{"name": "A", "value": "piggy:B"}]}], "containers": [{"name": "c", "args": ["x"], "env": [{"name": "A", "value": "piggy:B"}]}]}}`))
	f.Add([]byte(`{"spec": {"volumes": [{"name": "piggy-env"}], "containers": [{"name": "c", "command": ["/piggy/piggy-env"], "args": ["--", "x"], "env": [{"name": "PIGGY_UID", "value": "u"}]}]}}`))
	f.Add([]byte(`{"metadata": {"annotations": {"piggysec.com/piggy-uid": "{bad"}}, "spec": {"containers": [{"name": "c", "command": [], "env": [{"name": "A", "value": "piggy:"}]}]}}`))
	f.Add([]byte(`null`))
	h, _ := newHandler(f, nil)
	f.Fuzz(func(t *testing.T, pod []byte) {
		if !json.Valid(pod) {
			return
		}
		rec := post(h, reviewBody(t, "fuzz", string(pod)), "application/json")
		if rec.Code != http.StatusOK {
			return // the review itself was rejected as malformed
		}
		var out admissionv1.AdmissionReview
		if err := json.Unmarshal(rec.Body.Bytes(), &out); err != nil || out.Response == nil || out.Response.UID != "fuzz" {
			t.Fatalf("invalid response: %s", rec.Body)
		}
		if !out.Response.Allowed || len(out.Response.Patch) == 0 {
			return
		}
		p, err := jsonpatch.DecodePatch(out.Response.Patch)
		if err != nil {
			t.Fatalf("patch does not decode: %v", err)
		}
		patched, err := p.Apply(pod)
		if err != nil {
			t.Fatalf("patch does not apply: %v\npod: %s\npatch: %s", err, pod, out.Response.Patch)
		}
		var got corev1.Pod
		if err := json.Unmarshal(patched, &got); err != nil {
			t.Fatalf("patched pod does not decode: %v", err)
		}
	})
}
