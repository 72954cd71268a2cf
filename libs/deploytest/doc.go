// Package deploytest holds no code but tests: it validates Piggy's
// production install (charts/piggy), its images (deploy/docker) and the local
// stack (docker-compose.yaml) with real tools, real binaries and a real
// kube-apiserver.
//
// # Tools
//
// The chart tests run helm v3.22.0 (built with Kubernetes 1.37 capabilities)
// and helm-unittest v1.1.2, installed by deploy/tools/install.sh into
// .cache/tools/bin. PIGGY_HELM and PIGGY_HELM_UNITTEST name other binaries.
// A missing tool fails the tests with the command that installs it; they are
// never skipped.
//
// # What is checked
//
//   - helm lint and helm template of the defaults and the main variants
//     (cert-manager, generated CA, HPA, each component disabled, dashboards and
//     ServiceMonitors, every pod default set), with assertions on the webhook,
//     the admission policy, TLS material, RBAC, pod security and env;
//     helm-unittest suites with a defaults snapshot (charts/piggy/tests).
//   - The chart's container args and env start the real service binaries
//     (with the chart-generated certificates), and the helm test pod's script
//     passes against them.
//   - Server-side dry-run of every rendered object against a real
//     kube-apiserver (libs/kubetest), with cert-manager's and the Prometheus
//     Operator's real CRDs (read from their Go modules through the module
//     proxy) installed first.
//   - helm install and upgrade on that apiserver: generated certificates are
//     reused, and reissued only when near expiry; the services' RBAC is
//     exactly what they need (SubjectAccessReviews).
//   - End to end: the rendered MutatingWebhookConfiguration, pointed at a
//     local admission-gateway started with the chart's args and its
//     ServiceAccount's token, mutates pods created through the API; pods
//     without piggy annotations are not sent (gateway metrics); the
//     ValidatingAdmissionPolicy refuses pods left with literal piggy: values;
//     the piggy-env image's ENTRYPOINT runs the mutated init container's args.
//   - Every metric the Grafana dashboards query is exported by the services
//     (see metrics_test.go for the method).
//   - The Dockerfiles' build commands build, and docker-compose.yaml loads with
//     compose-go and wires the services the way the binaries accept.
package deploytest
