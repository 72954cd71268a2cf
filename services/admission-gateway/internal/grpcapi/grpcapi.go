// Package grpcapi serves the admission-gateway's diagnostics API
// (piggy.admissiongateway.v1) on its mTLS gRPC port.
package grpcapi

import (
	"context"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	kjson "sigs.k8s.io/json"

	admissiongatewayv1 "github.com/piggysec/piggy/libs/gen/piggy/admissiongateway/v1"
	"github.com/piggysec/piggy/services/admission-gateway/internal/mutate"
)

// Mutator is the decision being explained.
type Mutator interface {
	Mutate(ctx context.Context, pod *corev1.Pod, namespace string) mutate.Outcome
}

// Server implements AdmissionGatewayService.
type Server struct {
	admissiongatewayv1.UnimplementedAdmissionGatewayServiceServer
	mutator Mutator
}

// New returns a Server.
func New(m Mutator) *Server { return &Server{mutator: m} }

// ExplainPod runs the mutation on the given pod and reports the outcome.
func (s *Server) ExplainPod(ctx context.Context, req *admissiongatewayv1.ExplainPodRequest) (*admissiongatewayv1.ExplainPodResponse, error) {
	var pod corev1.Pod
	if err := kjson.UnmarshalCaseSensitivePreserveInts([]byte(req.GetPodJson()), &pod); err != nil {
		return nil, status.Errorf(codes.InvalidArgument, "pod_json is not a Pod: %v", err)
	}
	ns := req.GetNamespace()
	if ns == "" {
		ns = pod.Namespace
	}
	if ns == "" {
		return nil, status.Error(codes.InvalidArgument, "namespace is required (in the request or the pod)")
	}
	out := s.mutator.Mutate(ctx, &pod, ns)
	resp := &admissiongatewayv1.ExplainPodResponse{
		Allowed:           out.Denied == "",
		DeniedReason:      out.Denied,
		Warnings:          out.Warnings,
		MutatedContainers: out.Mutated,
	}
	if len(out.Patch) > 0 && out.Denied == "" {
		patch, err := mutate.Marshal(out.Patch)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "encode patch: %v", err)
		}
		resp.PatchJson = string(patch)
	}
	return resp, nil
}
