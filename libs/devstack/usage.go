package devstack

import (
	"fmt"
	"io"
	"path/filepath"
)

// PrintUsage tells a person how to use the running stack.
func (s *Stack) PrintUsage(w io.Writer, grpcurl string) {
	demoPod := s.demoPod
	if demoPod == "" {
		demoPod = "<pod>"
	}
	certs := fmt.Sprintf("-cacert %s -cert %s -key %s", filepath.Join(s.CertDir, "ca.crt"), filepath.Join(s.CertDir, "client.crt"), filepath.Join(s.CertDir, "client.key"))
	fmt.Fprintf(w, `
Piggy is running. Press Ctrl-C to stop everything.

  kubectl:   export KUBECONFIG=%s
  logs:      %s (one file per service)
  webhook:   https://%s/mutate     broker: %s

  gRPC health and diagnostics (mTLS, server reflection):
    %[5]s %[6]s %[7]s grpc.health.v1.Health/Check
    %[5]s %[6]s %[8]s grpc.health.v1.Health/Check
    %[5]s %[6]s %[9]s grpc.health.v1.Health/Check
    %[5]s %[6]s -d '{"namespace":"demo","podJson":"{\"metadata\":{\"name\":\"x\"},\"spec\":{\"serviceAccountName\":\"app\",\"containers\":[{\"name\":\"app\",\"image\":\"%[10]s\",\"env\":[{\"name\":\"A\",\"value\":\"piggy:A\"}]}]}}"}' %[7]s piggy.admissiongateway.v1.AdmissionGatewayService/ExplainPod
    %[5]s %[6]s -d '{"lookup":{"image":"%[10]s","namespace":"demo","serviceAccount":"app"}}' %[8]s piggy.imageresolver.v1.ImageResolverService/ExplainImage
    %[5]s %[6]s %[8]s piggy.imageresolver.v1.ImageResolverService/GetCacheStats
    %[5]s %[6]s -d '{"namespace":"demo","podName":"%[13]s","containerName":"app"}' %[9]s piggy.secretbroker.v1.SecretBrokerService/ExplainAccess
    %[5]s %[6]s %[9]s piggy.secretbroker.v1.SecretBrokerService/GetCacheStats

  Your own pod: reference values as piggy:KEY. The demo namespace's service account "app" may
  read the seeded secret %[11]s (DB_PASSWORD, API_TOKEN) and SSM path %[12]s; other namespaces
  are kept apart by the broker's policy.
    kubectl -n demo run web --image=%[10]s --overrides='{"spec":{"serviceAccountName":"app"}}' \
      --annotations=piggysec.com/aws-secret-name=%[11]s --env=DB_PASSWORD=piggy:DB_PASSWORD
    kubectl -n demo get pod web -o yaml   # see the mutation
  (No kubelet runs here: pods stay Pending. The demo above ran one locally through piggy-env.)
`, s.Cluster.KubeconfigPath(), s.LogDir, s.gateway.addr("webhook"), s.BrokerURL(),
		grpcurl, certs, s.gateway.addr("grpc"), s.resolver.addr("grpc"), s.broker.addr("grpc"),
		s.DemoImage(), DemoSecretName, DemoSSMPath, demoPod)
}
