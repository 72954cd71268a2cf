package deploytest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/piggysec/piggy/libs/kubetest"
)

// TestAdmissionPolicyAfterCreation installs the chart's rendered
// ValidatingAdmissionPolicy and binding on a real kube-apiserver and shows
// that they guard what the webhook never sees, because it reviews pod
// CREATEs only: UPDATEs that add, change or remove piggysec.com/
// annotations, and ephemeral containers (the pods/ephemeralcontainers
// subresource, kubectl debug) that mount Piggy's volumes or set PIGGY_
// env. Everything else about an existing pod stays updatable.
func TestAdmissionPolicyAfterCreation(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real kube-apiserver")
	}
	cl := kubetest.ForTest(t)
	c := newClient(t, cl.RESTConfig())
	ctx := t.Context()

	objs := helmTemplate(t)
	for _, kind := range []string{"ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"} {
		u := find(objs, kind, "")[0]
		if _, err := c.resource(t, u).Create(ctx, u, metav1.CreateOptions{}); err != nil {
			t.Fatalf("create %s: %v", kind, err)
		}
	}
	team, err := kubetest.CreateNamespace(ctx, c.cs, "team-")
	if err != nil {
		t.Fatal(err)
	}
	ns := team.Name
	pods := c.cs.CoreV1().Pods(ns)

	// A pod as the webhook leaves it, as far as the policy looks: Piggy's
	// annotations and volumes (no webhook runs here).
	expiry := int64(600)
	pod, err := kubetest.CreatePod(ctx, c.cs, ns, "web", "", func(p *corev1.Pod) {
		p.Annotations = map[string]string{
			"piggysec.com/aws-secret-name": ns + "/app",
			"piggysec.com/piggy-uid":       `{"main":{"uid":"0123456789abcdef0123456789abcdef","signature":"s"}}`,
			"team.example/owner":           "a",
		}
		p.Spec.Volumes = []corev1.Volume{
			{Name: "piggy-env", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{Medium: corev1.StorageMediumMemory}}},
			{Name: "piggy-token", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{Sources: []corev1.VolumeProjection{{
				ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Audience: "piggy", ExpirationSeconds: &expiry, Path: "token"}}}}}},
		}
	})
	if err != nil {
		t.Fatal(err)
	}

	// The policy takes effect shortly after creation.
	eventually(t, 30*time.Second, "the admission policy to refuse a literal piggy: value", func() error {
		p, err := kubetest.CreatePod(ctx, c.cs, ns, "literal-", "", func(p *corev1.Pod) {
			p.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "TOKEN", Value: "piggy:TOKEN"}}
		})
		if err == nil {
			_ = pods.Delete(ctx, p.Name, metav1.DeleteOptions{})
			return fmt.Errorf("pod %s admitted", p.Name)
		}
		return nil
	})

	t.Run("piggy annotations cannot change", func(t *testing.T) {
		tests := []struct {
			name   string
			change func(map[string]string)
			key    string
		}{
			{"chosen identities", func(a map[string]string) {
				a["piggysec.com/piggy-uid"] = `{"main":{"uid":"fedcba9876543210fedcba9876543210","signature":"s"}}`
			}, "piggysec.com/piggy-uid"},
			{"another broker", func(a map[string]string) { a["piggysec.com/piggy-address"] = "https://evil.example" }, "piggysec.com/piggy-address"},
			{"removed setting", func(a map[string]string) { delete(a, "piggysec.com/aws-secret-name") }, "piggysec.com/aws-secret-name"},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
				if err != nil {
					t.Fatal(err)
				}
				tt.change(p.Annotations)
				_, err = pods.Update(ctx, p, metav1.UpdateOptions{})
				want := "piggy: annotation(s) " + tt.key + " cannot change after the pod is created"
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("update error = %v, want %q", err, want)
				}
			})
		}
	})

	t.Run("other annotations and labels can change", func(t *testing.T) {
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		p.Annotations["team.example/owner"] = "b"
		p.Labels = map[string]string{"tier": "web"}
		if _, err := pods.Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Fatal(err)
		}
	})

	addEphemeral := func(t *testing.T, e corev1.EphemeralContainer) error {
		t.Helper()
		p, err := pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		e.Image = kubetest.PauseImage
		e.TerminationMessagePolicy = corev1.TerminationMessageReadFile
		e.ImagePullPolicy = corev1.PullIfNotPresent
		p.Spec.EphemeralContainers = append(p.Spec.EphemeralContainers, e)
		_, err = pods.UpdateEphemeralContainers(ctx, p.Name, p, metav1.UpdateOptions{})
		return err
	}
	t.Run("ephemeral containers cannot use Piggy's volumes or env", func(t *testing.T) {
		tests := []struct {
			name string
			e    corev1.EphemeralContainer
		}{
			{"token mount", corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug-token",
				VolumeMounts: []corev1.VolumeMount{{Name: "piggy-token", MountPath: "/t", ReadOnly: true}}}}},
			{"launcher mount", corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug-launcher",
				VolumeMounts: []corev1.VolumeMount{{Name: "piggy-env", MountPath: "/piggy"}}}}},
			{"PIGGY_UID", corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug-uid",
				Env: []corev1.EnvVar{{Name: "PIGGY_UID", Value: "0123456789abcdef0123456789abcdef"}}}}},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				err := addEphemeral(t, tt.e)
				want := "piggy: ephemeral container(s) " + tt.e.Name + " mount the piggy-token or piggy-env volume or set PIGGY_ env vars"
				if err == nil || !strings.Contains(err.Error(), want) {
					t.Errorf("error = %v, want %q", err, want)
				}
			})
		}
	})

	t.Run("a plain ephemeral container is added", func(t *testing.T) {
		if err := addEphemeral(t, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug",
			Env: []corev1.EnvVar{{Name: "DEBUG", Value: "1"}}}}); err != nil {
			t.Fatal(err)
		}
		// Later updates of the pod still pass with it in place.
		if err := addEphemeral(t, corev1.EphemeralContainer{EphemeralContainerCommon: corev1.EphemeralContainerCommon{Name: "debug-2"}}); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the binding only covers the webhook's namespaces", func(t *testing.T) {
		b := one[admissionregistrationv1.ValidatingAdmissionPolicyBinding](t, objs, "ValidatingAdmissionPolicyBinding", name("launcher-required"))
		if b.Spec.MatchResources == nil || b.Spec.MatchResources.NamespaceSelector == nil {
			t.Fatalf("binding without a namespace selector: %+v", b.Spec)
		}
		if _, err := kubetest.CreateNamespace(ctx, c.cs, releaseNamespace); err != nil {
			t.Fatal(err)
		}
		p, err := kubetest.CreatePod(ctx, c.cs, releaseNamespace, "piggy-", "", func(p *corev1.Pod) {
			p.Annotations = map[string]string{"piggysec.com/aws-secret-name": "x"}
		})
		if err != nil {
			t.Fatal(err)
		}
		p.Annotations["piggysec.com/aws-secret-name"] = "y"
		if _, err := c.cs.CoreV1().Pods(releaseNamespace).Update(ctx, p, metav1.UpdateOptions{}); err != nil {
			t.Errorf("a pod of the release namespace was refused: %v", err)
		}
	})
}
