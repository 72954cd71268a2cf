// Package webhook is the HTTP adapter of the admission-gateway: it decodes
// AdmissionReview v1 requests, asks the mutation for a decision and always
// answers with a valid AdmissionReview (allowed with a patch, allowed
// without one, or denied with a message), also when the mutation panics.
package webhook

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/http"
	"runtime/debug"
	"strconv"
	"sync"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	kjson "sigs.k8s.io/json"

	"github.com/piggysec/piggy/services/admission-gateway/internal/jsonappend"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// MaxBodyBytes caps a review request (the API server's own request limit
// is 3 MiB; a review wraps the object once).
const MaxBodyBytes = 4 << 20

// Mutator is the decision the handler needs.
type Mutator interface {
	Mutate(ctx context.Context, pod *corev1.Pod, namespace string) mutate.Outcome
}

// Handler serves POST /mutate.
type Handler struct {
	mutator  Mutator
	log      *slog.Logger
	reviews  metric.Int64Counter
	duration metric.Float64Histogram
	// outcomes are the metric attributes of each outcome, built once.
	outcomes map[string]metric.MeasurementOption
}

// New returns a Handler that records metrics with meter.
func New(m Mutator, log *slog.Logger, meter metric.Meter) (*Handler, error) {
	reviews, err := meter.Int64Counter("piggy_admission_reviews",
		metric.WithDescription("Admission reviews by outcome: mutated, unchanged, denied, skipped, error."))
	if err != nil {
		return nil, err
	}
	duration, err := meter.Float64Histogram("piggy_admission_review_duration_seconds",
		metric.WithDescription("Time to answer an admission review."), metric.WithUnit("s"),
		metric.WithExplicitBucketBoundaries(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
	if err != nil {
		return nil, err
	}
	outcomes := map[string]metric.MeasurementOption{}
	for _, o := range []string{"mutated", "unchanged", "denied", "skipped", "error"} {
		outcomes[o] = metric.WithAttributeSet(attribute.NewSet(attribute.String("outcome", o)))
	}
	return &Handler{mutator: m, log: log, reviews: reviews, duration: duration, outcomes: outcomes}, nil
}

// ServeHTTP implements http.Handler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "piggy: admission reviews are POSTed", http.StatusMethodNotAllowed)
		return
	}
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err != nil || mt != "application/json" {
		http.Error(w, "piggy: Content-Type must be application/json", http.StatusUnsupportedMediaType)
		return
	}
	bufs := reviewBuffers.Get().(*buffers)
	defer bufs.release()
	bufs.body.Reset()
	_, err := bufs.body.ReadFrom(http.MaxBytesReader(w, r.Body, MaxBodyBytes))
	body := bufs.body.Bytes()
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("piggy: admission review larger than %d bytes", MaxBodyBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "piggy: reading the request: "+err.Error(), http.StatusBadRequest)
		return
	}
	in, err := decodeReview(body)
	if err != nil {
		http.Error(w, "piggy: malformed AdmissionReview: "+err.Error(), http.StatusBadRequest)
		return
	}
	if in.APIVersion != admissionv1.SchemeGroupVersion.String() || in.Kind != "AdmissionReview" || in.Request == nil {
		http.Error(w, "piggy: expected an admission.k8s.io/v1 AdmissionReview with a request", http.StatusBadRequest)
		return
	}

	ctx, cancel := reviewContext(r)
	defer cancel()
	start := time.Now()
	resp, outcome := h.review(ctx, in.Request, body, &bufs.patch)
	took := time.Since(start)
	attrs := h.outcomes[outcome]
	h.reviews.Add(r.Context(), 1, attrs)
	h.duration.Record(r.Context(), took.Seconds(), attrs)

	out, err := encodeReview(bufs.out[:0], in.APIVersion, in.Kind, resp)
	if err != nil {
		resp = deny(in.Request, http.StatusInternalServerError, "piggy: cannot encode the response; see the admission-gateway logs")
		h.log.ErrorContext(r.Context(), "encoding the admission response failed", "uid", string(in.Request.UID), "error", err)
		out, _ = encodeReview(bufs.out[:0], in.APIVersion, in.Kind, resp) // a denial always encodes
	}
	bufs.out = out
	w.Header().Set("Content-Type", "application/json")
	if _, err := w.Write(out); err != nil {
		h.log.WarnContext(r.Context(), "writing admission response failed", "error", err)
	}
}

// buffers are the byte slices of one review: the request body, the encoded
// patch and the answer. Nothing outlives the review (decoding copies what
// it keeps, the response writer copies what it is given), so they are
// reused across reviews.
type buffers struct {
	body       bytes.Buffer
	patch, out []byte
}

// maxPooledBuffer bounds what a pooled buffer keeps: a rare large review
// does not pin its memory.
const maxPooledBuffer = 64 << 10

var reviewBuffers = sync.Pool{New: func() any { return new(buffers) }}

// release returns b to the pool unless a buffer grew past maxPooledBuffer.
func (b *buffers) release() {
	if b.body.Cap() > maxPooledBuffer || cap(b.patch) > maxPooledBuffer || cap(b.out) > maxPooledBuffer {
		return
	}
	reviewBuffers.Put(b)
}

// encodeReview appends an AdmissionReview answering with resp to buf, as
// encoding/json would encode it (same fields, same order) but without
// reflection; the patch is base64-encoded in place.
func encodeReview(buf []byte, apiVersion, kind string, resp *admissionv1.AdmissionResponse) ([]byte, error) {
	if len(resp.AuditAnnotations) > 0 {
		// Not set by the webhook; kept correct rather than fast.
		out, err := json.Marshal(admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: apiVersion, Kind: kind}, Response: resp})
		return append(buf, out...), err
	}
	buf = append(buf, `{"kind":`...)
	buf = jsonappend.String(buf, kind)
	buf = append(buf, `,"apiVersion":`...)
	buf = jsonappend.String(buf, apiVersion)
	buf = append(buf, `,"response":{"uid":`...)
	buf = jsonappend.String(buf, string(resp.UID))
	buf = append(buf, `,"allowed":`...)
	buf = strconv.AppendBool(buf, resp.Allowed)
	if resp.Result != nil {
		status, err := json.Marshal(resp.Result)
		if err != nil {
			return nil, err
		}
		buf = append(buf, `,"status":`...)
		buf = append(buf, status...)
	}
	if len(resp.Patch) > 0 {
		buf = append(buf, `,"patch":"`...)
		buf = base64.StdEncoding.AppendEncode(buf, resp.Patch)
		buf = append(buf, '"')
	}
	if resp.PatchType != nil {
		buf = append(buf, `,"patchType":`...)
		buf = jsonappend.String(buf, string(*resp.PatchType))
	}
	if len(resp.Warnings) > 0 {
		buf = append(buf, `,"warnings":[`...)
		for i, w := range resp.Warnings {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = jsonappend.String(buf, w)
		}
		buf = append(buf, ']')
	}
	return append(buf, "}}\n"...), nil
}

// review is the part of an AdmissionReview the webhook reads; decoding
// only these fields (not userInfo, oldObject, options) keeps reviews cheap.
type review struct {
	APIVersion string   `json:"apiVersion"`
	Kind       string   `json:"kind"`
	Request    *request `json:"request"`
}

// request is the AdmissionRequest; for a Pod the object is decoded in the
// same pass as the review (Pod), otherwise kept raw.
type request struct {
	UID         types.UID               `json:"uid"`
	Kind        metav1.GroupVersionKind `json:"kind"`
	SubResource string                  `json:"subResource"`
	Namespace   string                  `json:"namespace"`
	Operation   admissionv1.Operation   `json:"operation"`
	Object      runtime.RawExtension    `json:"object"`

	// Pod is the decoded object when the one-pass decode succeeded.
	Pod *corev1.Pod `json:"-"`
	// PodErr is why the object did not decode as a Pod.
	PodErr error `json:"-"`
}

// podReview decodes a review and its Pod in one pass.
type podReview struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Request    *struct {
		UID         types.UID               `json:"uid"`
		Kind        metav1.GroupVersionKind `json:"kind"`
		SubResource string                  `json:"subResource"`
		Namespace   string                  `json:"namespace"`
		Operation   admissionv1.Operation   `json:"operation"`
		Object      *corev1.Pod             `json:"object"`
	} `json:"request"`
}

// decodeReview decodes body case-sensitively, as the API server writes it
// (the patch paths are case-sensitive, so "Spec" must not be read as
// "spec"). Reviews of Pods, the common case, are decoded in one pass; any
// other object, or one that is not a valid Pod, is kept raw.
func decodeReview(body []byte) (*review, error) {
	var pr podReview
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &pr); err == nil && pr.Request != nil && pr.Request.Object != nil {
		r := pr.Request
		return &review{APIVersion: pr.APIVersion, Kind: pr.Kind, Request: &request{
			UID: r.UID, Kind: r.Kind, SubResource: r.SubResource, Namespace: r.Namespace, Operation: r.Operation, Pod: r.Object,
		}}, nil
	}
	var in review
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &in); err != nil {
		return nil, err
	}
	if in.Request != nil {
		var pod corev1.Pod
		if err := kjson.UnmarshalCaseSensitivePreserveInts(in.Request.Object.Raw, &pod); err != nil {
			in.Request.PodErr = err
		} else {
			in.Request.Pod = &pod
		}
	}
	return &in, nil
}

// hasMetadata reports whether the review's object has a metadata object.
func hasMetadata(body []byte) bool {
	var top struct {
		Request struct {
			Object struct {
				Metadata json.RawMessage `json:"metadata"`
			} `json:"object"`
		} `json:"request"`
	}
	if err := kjson.UnmarshalCaseSensitivePreserveInts(body, &top); err != nil {
		return false
	}
	m := top.Request.Object.Metadata
	return len(m) > 0 && string(m) != "null"
}

// review decides one request. A panic becomes a denial carrying the UID.
//
// The patch is encoded into *patchBuf, which the response then refers to.
func (h *Handler) review(ctx context.Context, req *request, body []byte, patchBuf *[]byte) (resp *admissionv1.AdmissionResponse, outcome string) {
	start := time.Now()
	defer func() {
		if v := recover(); v != nil {
			h.log.ErrorContext(ctx, "panic while reviewing a pod", "uid", string(req.UID), "namespace", req.Namespace,
				"panic_type", fmt.Sprintf("%T", v), "stack", string(debug.Stack()))
			resp = deny(req, http.StatusInternalServerError, "piggy: internal error while mutating the pod; see the admission-gateway logs")
			outcome = "error"
		}
	}()

	if req.Kind.Group != "" || req.Kind.Kind != "Pod" || req.Operation != admissionv1.Create || req.SubResource != "" {
		return &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}, "skipped"
	}
	if req.Pod == nil {
		msg := "piggy: the review has no pod"
		if req.PodErr != nil {
			msg = "piggy: cannot decode the pod: " + req.PodErr.Error()
		}
		return deny(req, http.StatusBadRequest, msg), "denied"
	}
	pod := req.Pod
	// The patch may add /metadata/annotations; the API server always sends
	// metadata, but a pod without it could not be patched.
	if pod.Annotations == nil && !hasMetadata(body) {
		return deny(req, http.StatusBadRequest, "piggy: the pod has no metadata"), "denied"
	}
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	res := h.mutator.Mutate(ctx, pod, ns)
	if res.Denied != "" {
		h.log.InfoContext(ctx, "Pod denied", append(podFields(pod, ns), "reason", res.Denied)...)
		r := deny(req, http.StatusForbidden, res.Denied)
		r.Warnings = res.Warnings
		return r, "denied"
	}
	resp = &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true, Warnings: res.Warnings}
	if len(res.Patch) == 0 {
		return resp, "unchanged"
	}
	patch, err := mutate.AppendPatch((*patchBuf)[:0], res.Patch)
	*patchBuf = patch
	if err != nil {
		return deny(req, http.StatusInternalServerError, "piggy: cannot encode the patch: "+err.Error()), "error"
	}
	pt := admissionv1.PatchTypeJSONPatch
	resp.Patch, resp.PatchType = patch, &pt
	took := time.Since(start).Round(time.Microsecond)
	if owner := controller(pod); pod.Name == "" && owner != nil {
		h.info(ctx, "Pod of "+owner.Kind+" '"+owner.Name+"' has been mutated (took "+took.String()+")",
			slog.String("namespace", ns), slog.String("owner", owner.Name), slog.Any("containers", res.Mutated))
	} else {
		h.info(ctx, "Pod '"+podName(pod)+"' has been mutated (took "+took.String()+")",
			slog.String("namespace", ns), slog.String("pod_name", podName(pod)), slog.Any("containers", res.Mutated))
	}
	return resp, "mutated"
}

// info logs msg at info level like InfoContext, without looking up the
// caller's program counter (the service's logger prints no source).
func (h *Handler) info(ctx context.Context, msg string, attrs ...slog.Attr) {
	if !h.log.Enabled(ctx, slog.LevelInfo) {
		return
	}
	r := slog.NewRecord(time.Now(), slog.LevelInfo, msg, 0)
	r.AddAttrs(attrs...)
	_ = h.log.Handler().Handle(ctx, r)
}

func deny(req *request, code int32, msg string) *admissionv1.AdmissionResponse {
	reason := metav1.StatusReasonForbidden
	switch code {
	case http.StatusBadRequest:
		reason = metav1.StatusReasonBadRequest
	case http.StatusInternalServerError:
		reason = metav1.StatusReasonInternalError
	}
	return &admissionv1.AdmissionResponse{
		UID:     req.UID,
		Allowed: false,
		Result:  &metav1.Status{Status: metav1.StatusFailure, Code: code, Reason: reason, Message: msg},
	}
}

func podName(p *corev1.Pod) string {
	if p.Name != "" {
		return p.Name
	}
	return p.GenerateName
}

func podFields(p *corev1.Pod, ns string) []any {
	if owner := controller(p); p.Name == "" && owner != nil {
		return []any{"namespace", ns, "owner", owner.Name, "owner_kind", owner.Kind}
	}
	return []any{"namespace", ns, "pod_name", podName(p)}
}

func controller(p *corev1.Pod) *metav1.OwnerReference {
	for i := range p.OwnerReferences {
		if o := &p.OwnerReferences[i]; o.Controller != nil && *o.Controller {
			return o
		}
	}
	if len(p.OwnerReferences) > 0 {
		return &p.OwnerReferences[0]
	}
	return nil
}

// answerMargin is the part of the API server's webhook timeout kept for
// writing the answer and its way back.
const answerMargin = 500 * time.Millisecond

// reviewContext bounds a review by the timeout the API server sends with
// it (the "timeout" query parameter, its webhook timeoutSeconds), less
// answerMargin, so that a slow dependency ends in the gateway's own clear
// denial rather than the API server's generic webhook timeout. A request
// without a usable timeout keeps the request's context.
func reviewContext(r *http.Request) (context.Context, context.CancelFunc) {
	d, err := time.ParseDuration(r.URL.Query().Get("timeout"))
	if err != nil || d <= 0 {
		return context.WithCancel(r.Context())
	}
	return context.WithTimeout(r.Context(), max(d-answerMargin, d/2))
}
