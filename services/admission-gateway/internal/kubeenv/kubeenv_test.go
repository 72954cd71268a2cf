package kubeenv

import (
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// counting returns a fake clientset holding objs and a function that counts
// its ConfigMap gets.
func counting(objs ...runtime.Object) (*fake.Clientset, func() int) {
	cs := fake.NewClientset(objs...)
	var (
		mu   sync.Mutex
		gets int
	)
	cs.PrependReactor("get", "configmaps", func(k8stesting.Action) (bool, runtime.Object, error) {
		mu.Lock()
		gets++
		mu.Unlock()
		return false, nil, nil
	})
	return cs, func() int { mu.Lock(); defer mu.Unlock(); return gets }
}

func configMap(ns, name string, data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: data}
}

func TestKeepsOnlyReferences(t *testing.T) {
	cs, _ := counting(configMap("team", "cfg", map[string]string{"A": "piggy:A", "B": "plain", "C": "piggy:"}),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "team", Name: "sec"}, Data: map[string][]byte{"token": []byte("piggy:T"), "password": []byte("hunter2")}})
	s := New(cs, Options{ConfigMapTTL: time.Minute, ConfigMapCacheSize: 10, SecretNamespaces: []string{"team"}})
	cm, err := s.ConfigMap(t.Context(), "team", "cfg")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"A": "piggy:A"}, cm); diff != "" {
		t.Errorf("ConfigMap (-want +got):\n%s", diff)
	}
	sec, err := s.Secret(t.Context(), "team", "sec")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[string]string{"token": "piggy:T"}, sec); diff != "" {
		t.Errorf("Secret (-want +got):\n%s", diff)
	}
	if _, err := s.ConfigMap(t.Context(), "team", "absent"); !errors.Is(err, mutate.ErrNotFound) {
		t.Errorf("absent ConfigMap: %v, want ErrNotFound", err)
	}
}

func TestConfigMapCache(t *testing.T) {
	cs, gets := counting(configMap("team", "cfg", map[string]string{"A": "piggy:A"}), configMap("other", "cfg", map[string]string{"B": "piggy:B"}))
	s := New(cs, Options{ConfigMapTTL: 3 * time.Second, ConfigMapCacheSize: 10})
	now := time.Unix(1000, 0)
	s.now = func() time.Time { return now }
	read := func(ns string) map[string]string {
		t.Helper()
		cm, err := s.ConfigMap(t.Context(), ns, "cfg")
		if err != nil {
			t.Fatal(err)
		}
		return cm
	}
	read("team")
	read("team")
	if n := gets(); n != 1 {
		t.Errorf("%d reads for two lookups within the TTL, want 1", n)
	}
	if got := read("other"); got["B"] != "piggy:B" || got["A"] != "" {
		t.Errorf("other namespace's ConfigMap = %v (the cache is keyed by namespace and name)", got)
	}
	now = now.Add(3 * time.Second)
	read("team")
	if n := gets(); n != 3 {
		t.Errorf("%d reads after the TTL, want 3", n)
	}
}

func TestConfigMapCacheIsBounded(t *testing.T) {
	var objs []runtime.Object
	for i := range 20 {
		objs = append(objs, configMap("team", fmt.Sprint(i), map[string]string{"A": "piggy:A"}))
	}
	cs, _ := counting(objs...)
	s := New(cs, Options{ConfigMapTTL: time.Minute, ConfigMapCacheSize: 5})
	for i := range 20 {
		if _, err := s.ConfigMap(t.Context(), "team", fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
		if n := len(s.cache); n > 5 {
			t.Fatalf("%d cached ConfigMaps, want at most 5", n)
		}
	}
}

// TestSecretsOutsideTheListAreNotRead: a Secret of a namespace the
// operator has not listed is not read at all (no API call), whatever a
// review names.
func TestSecretsOutsideTheListAreNotRead(t *testing.T) {
	cs, _ := counting(&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: "piggy", Name: "piggy-ca"}, Data: map[string][]byte{"tls.key": []byte("key")}})
	for _, opts := range []Options{{}, {SecretNamespaces: []string{"team"}}} {
		if _, err := New(cs, opts).Secret(t.Context(), "piggy", "piggy-ca"); !errors.Is(err, mutate.ErrNotRead) {
			t.Errorf("Secret with %v: %v, want ErrNotRead", opts.SecretNamespaces, err)
		}
	}
	if n := len(cs.Actions()); n != 0 {
		t.Errorf("%d API calls (%v), want none", n, cs.Actions())
	}
}
