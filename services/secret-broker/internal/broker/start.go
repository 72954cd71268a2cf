package broker

import (
	"context"

	"github.com/piggysec/piggy/services/secret-broker/internal/podcheck"
	"github.com/piggysec/piggy/services/secret-broker/internal/startclaim"
)

// StartClaims answer a container once per container start
// (startclaim.Claims).
type StartClaims interface {
	// Claim returns nil when the request of start s with fetchID may be
	// answered.
	Claim(ctx context.Context, s startclaim.Start, fetchID string) error
}

// claimStart refuses a request for a container start that another fetch
// was already answered for (Options.Starts; nil answers every request).
func (b *Broker) claimStart(ctx context.Context, fetchID string, pc podcheck.Result) error {
	if b.opts.Starts == nil {
		return nil
	}
	return b.opts.Starts.Claim(ctx, startclaim.Start{
		Namespace: pc.Pod.Namespace, PodName: pc.Pod.Name, PodUID: string(pc.Pod.UID),
		Container: pc.ContainerName, RestartCount: pc.RestartCount,
	}, fetchID)
}
