package podcheck

import (
	"context"
	"fmt"
	"strings"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/metric"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	toolscache "k8s.io/client-go/tools/cache"

	"github.com/piggysec/piggy/libs/podgrant"
	"github.com/piggysec/piggy/libs/podidentity"
	"github.com/piggysec/piggy/libs/podsettings"
	"github.com/piggysec/piggy/services/secret-broker/internal/fault"
	"github.com/piggysec/piggy/services/secret-broker/internal/kubeclient"
)

// containerUIDIndex indexes pods by "<namespace>/<container uid>" for every
// UID of their piggy-uid annotation.
const containerUIDIndex = "piggy-container-uid"

// PodsOptions configure Pods.
type PodsOptions struct {
	// Informer keeps a watch-fed, trimmed copy of every pod so that most
	// requests need no pod read from the API (needs list and watch on
	// pods). Without it, or before it has synced, pods are read with GET.
	Informer bool
	Tracer   trace.Tracer
	Meter    metric.Meter
}

// Pods is a PodSource over the Kubernetes API, with an optional informer
// cache in front. A pod found in the cache is used only when its UID is the
// one asked for; any other case (not yet seen, recreated under the same
// name, deleted) is read from the API, so the cache can only make a request
// faster, never let a different pod through.
type Pods struct {
	client   kubernetes.Interface
	factory  informers.SharedInformerFactory
	informer toolscache.SharedIndexInformer
	tracer   trace.Tracer
	lookups  metric.Int64Counter
}

// NewPods returns a Pods; call Start to run its informer.
func NewPods(client kubernetes.Interface, opts PodsOptions) (*Pods, error) {
	p := &Pods{client: client, tracer: opts.Tracer}
	if p.tracer == nil {
		p.tracer = noop.NewTracerProvider().Tracer("")
	}
	if opts.Meter != nil {
		c, err := opts.Meter.Int64Counter("piggy_secret_broker_pod_lookups",
			metric.WithDescription("Pod lookups by source (informer cache or API read) and result."))
		if err != nil {
			return nil, err
		}
		p.lookups = c
	}
	if opts.Informer {
		p.factory = informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithTransform(trimPod))
		p.informer = p.factory.Core().V1().Pods().Informer()
		if err := p.informer.AddIndexers(toolscache.Indexers{containerUIDIndex: indexContainerUIDs}); err != nil {
			return nil, fmt.Errorf("pod informer index: %w", err)
		}
	}
	return p, nil
}

// Start runs the informer until ctx ends and returns nil. Without an
// informer it just waits for ctx.
func (p *Pods) Start(ctx context.Context) error {
	if p.factory != nil {
		p.factory.Start(ctx.Done())
		<-ctx.Done()
		p.factory.Shutdown()
		return nil
	}
	<-ctx.Done()
	return nil
}

// PodEvents receive the informer's changes of pods with a container
// Piggy launched (startclaim.Claims). Their methods must not block.
type PodEvents interface {
	// PodChanged is called after the pod uid was added or updated.
	PodChanged(uid string)
	// PodDeleted is called after the pod uid was deleted.
	PodDeleted(uid string)
}

// Watch sends the informer's events to h; call it before Start. It fails
// without an informer.
func (p *Pods) Watch(h PodEvents) error {
	if p.informer == nil {
		return fmt.Errorf("pod events need the pod informer (--pod-informer)")
	}
	launches := func(obj any) (*corev1.Pod, bool) {
		if tomb, ok := obj.(toolscache.DeletedFinalStateUnknown); ok {
			obj = tomb.Obj
		}
		pod, ok := obj.(*corev1.Pod)
		return pod, ok && len(launchedContainers(pod)) > 0
	}
	_, err := p.informer.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc: func(obj any) {
			if pod, ok := launches(obj); ok {
				h.PodChanged(string(pod.UID))
			}
		},
		UpdateFunc: func(_, obj any) {
			if pod, ok := launches(obj); ok {
				h.PodChanged(string(pod.UID))
			}
		},
		DeleteFunc: func(obj any) {
			if pod, ok := launches(obj); ok {
				h.PodDeleted(string(pod.UID))
			}
		},
	})
	if err != nil {
		return fmt.Errorf("pod informer handler: %w", err)
	}
	return nil
}

// Synced reports whether the informer has listed every pod once.
func (p *Pods) Synced() bool { return p.informer != nil && p.informer.HasSynced() }

// Pod implements PodSource.
func (p *Pods) Pod(ctx context.Context, namespace, name, uid string) (*corev1.Pod, error) {
	if p.Synced() {
		obj, ok, err := p.informer.GetIndexer().GetByKey(namespace + "/" + name)
		if err == nil && ok {
			if pod, isPod := obj.(*corev1.Pod); isPod && string(pod.UID) == uid {
				p.count(ctx, "informer", "found")
				return pod, nil
			}
		}
	}
	ctx, span := p.tracer.Start(ctx, "GetPod", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("k8s.namespace.name", namespace), attribute.String("k8s.pod.name", name)))
	defer span.End()
	pod, err := p.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		p.count(ctx, "api", "not_found")
		span.SetStatus(codes.Error, "pod not found")
		return nil, fault.New(fault.PermissionDenied, "pod_not_found", "pod %s/%s the token is bound to no longer exists", namespace, name)
	case err != nil:
		p.count(ctx, "api", "error")
		span.SetStatus(codes.Error, "pod read failed")
		return nil, kubeclient.Classify(err, fmt.Sprintf("could not read pod %s/%s", namespace, name))
	}
	p.count(ctx, "api", "found")
	return pod, nil
}

// PodsWithContainerUID implements PodSource.
func (p *Pods) PodsWithContainerUID(ctx context.Context, namespace, containerUID string) ([]*corev1.Pod, error) {
	if p.Synced() {
		objs, err := p.informer.GetIndexer().ByIndex(containerUIDIndex, namespace+"/"+containerUID)
		if err == nil {
			out := make([]*corev1.Pod, 0, len(objs))
			for _, o := range objs {
				if pod, ok := o.(*corev1.Pod); ok {
					out = append(out, pod)
				}
			}
			p.count(ctx, "informer", "listed")
			return out, nil
		}
	}
	ctx, span := p.tracer.Start(ctx, "ListPods", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("k8s.namespace.name", namespace)))
	defer span.End()
	list, err := p.client.CoreV1().Pods(namespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		p.count(ctx, "api", "error")
		span.SetStatus(codes.Error, "pod list failed")
		return nil, kubeclient.Classify(err, fmt.Sprintf("could not list the pods of namespace %s", namespace))
	}
	p.count(ctx, "api", "listed")
	var out []*corev1.Pod
	for i := range list.Items {
		for _, key := range containerUIDKeys(&list.Items[i]) {
			if key == namespace+"/"+containerUID {
				out = append(out, &list.Items[i])
				break
			}
		}
	}
	return out, nil
}

// lookupAttrs are the attribute sets of the lookup counter, built once
// (they are recorded on every request).
var lookupAttrs = map[[2]string]metric.AddOption{}

func init() {
	for _, source := range []string{"informer", "api"} {
		for _, result := range []string{"found", "not_found", "listed", "error"} {
			lookupAttrs[[2]string{source, result}] = metric.WithAttributeSet(attribute.NewSet(attribute.String("source", source), attribute.String("result", result)))
		}
	}
}

func (p *Pods) count(ctx context.Context, source, result string) {
	if p.lookups != nil {
		p.lookups.Add(ctx, 1, lookupAttrs[[2]string{source, result}])
	}
}

// trimPod keeps what the broker reads from a cached pod: identity, piggy
// annotations, service account, the launched containers and their restart
// counts. Everything else is dropped to keep the cache small.
func trimPod(obj any) (any, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return obj, nil // tombstones pass through
	}
	var ann map[string]string
	for k, v := range pod.Annotations {
		if strings.HasPrefix(k, podsettings.Prefix) {
			if ann == nil {
				ann = map[string]string{}
			}
			ann[k] = v
		}
	}
	initContainers, containers := trimContainers(pod.Spec.InitContainers), trimContainers(pod.Spec.Containers)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:              pod.Name,
			Namespace:         pod.Namespace,
			UID:               pod.UID,
			ResourceVersion:   pod.ResourceVersion,
			DeletionTimestamp: pod.DeletionTimestamp,
			Annotations:       ann,
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: pod.Spec.ServiceAccountName,
			InitContainers:     initContainers,
			Containers:         containers,
		},
		Status: corev1.PodStatus{
			InitContainerStatuses: trimStatuses(pod.Status.InitContainerStatuses, initContainers),
			ContainerStatuses:     trimStatuses(pod.Status.ContainerStatuses, containers),
		},
	}, nil
}

// trimStatuses keeps the name and restart count of the statuses of kept
// (the launched containers), for once-per-start.
func trimStatuses(statuses []corev1.ContainerStatus, kept []corev1.Container) []corev1.ContainerStatus {
	var out []corev1.ContainerStatus
	for _, st := range statuses {
		for _, c := range kept {
			if c.Name == st.Name {
				out = append(out, corev1.ContainerStatus{Name: st.Name, RestartCount: st.RestartCount})
				break
			}
		}
	}
	return out
}

// trimContainers keeps what Check reads of launched containers: the name,
// the args, and the PIGGY_UID and PIGGY_GRANT definitions in order. Of a
// container without PIGGY_GRANT (one the original webhook launched) it
// also keeps what CheckLegacy reads: the original's PIGGY_AWS_* values and
// every definition of a name that has a literal piggy: value.
func trimContainers(cs []corev1.Container) []corev1.Container {
	var out []corev1.Container
	for i := range cs {
		c := &cs[i]
		if !hasEnv(c, "PIGGY_UID") && !hasEnv(c, podgrant.EnvName) {
			continue
		}
		original := !hasEnv(c, podgrant.EnvName)
		var referencing map[string]bool
		if original {
			for _, e := range c.Env {
				if keptForOriginal(e) {
					if referencing == nil {
						referencing = map[string]bool{}
					}
					referencing[e.Name] = true
				}
			}
		}
		var env []corev1.EnvVar
		for _, e := range c.Env {
			if e.Name == "PIGGY_UID" || e.Name == podgrant.EnvName || referencing[e.Name] {
				env = append(env, e)
			}
		}
		out = append(out, corev1.Container{Name: c.Name, Args: c.Args, Env: env})
	}
	return out
}

func indexContainerUIDs(obj any) ([]string, error) {
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return nil, nil
	}
	return containerUIDKeys(pod), nil
}

func containerUIDKeys(pod *corev1.Pod) []string {
	ids, err := podidentity.Parse(pod.Annotations[podidentity.AnnotationKey])
	if err != nil {
		return nil
	}
	var keys []string
	for _, e := range ids {
		if e.UID != "" {
			keys = append(keys, pod.Namespace+"/"+e.UID)
		}
	}
	return keys
}

// GetPod reads the whole pod from the API (not the trimmed cache), for
// ExplainAccess. A missing pod is a NotFound fault.
func (p *Pods) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	ctx, span := p.tracer.Start(ctx, "GetPod", trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("k8s.namespace.name", namespace), attribute.String("k8s.pod.name", name)))
	defer span.End()
	pod, err := p.client.CoreV1().Pods(namespace).Get(ctx, name, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		span.SetStatus(codes.Error, "pod not found")
		return nil, fault.New(fault.NotFound, "pod_not_found", "pod %s/%s not found", namespace, name)
	case err != nil:
		span.SetStatus(codes.Error, "pod read failed")
		return nil, kubeclient.Classify(err, fmt.Sprintf("could not read pod %s/%s", namespace, name))
	}
	return pod, nil
}
