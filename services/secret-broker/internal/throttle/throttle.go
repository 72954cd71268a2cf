// Package throttle admits GetSecrets requests before they are
// authenticated, so that a flood of junk costs neither TokenReviews nor
// the capacity real pods need: a token bucket per source (the caller's IP
// address) and a cap on the requests in flight in the broker. A refused
// request gets a Refusal saying which limit refused it and when to come
// back; the transports answer it with RESOURCE_EXHAUSTED / HTTP 429 and a
// retry hint.
//
// Both transports share one Limiter: the HTTPS gateway admits by the HTTP
// client's address, gRPC by the peer's address, and the gateway's own
// loopback connections to gRPC (Forwarders) are not admitted a second time.
package throttle

import (
	"context"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	"golang.org/x/time/rate"
)

// Names of the limits, as in Refusal.Limit and the throttled metric.
const (
	PerSource = "per_source"
	InFlight  = "in_flight"
)

// DefaultMaxSources bounds the per-source table when Options.MaxSources is 0.
const DefaultMaxSources = 65536

// inFlightRetry is the hint of a refusal for the in-flight cap: requests
// finish within the broker's request timeout, most in milliseconds.
const inFlightRetry = time.Second

// warnEvery spaces the warnings about throttled requests.
const warnEvery = 10 * time.Second

// Options configure a Limiter.
type Options struct {
	// PerSourceRate is the sustained requests per second admitted from one
	// source; 0 (or less) disables the per-source limit.
	PerSourceRate float64
	// PerSourceBurst is the requests one source may make at once.
	PerSourceBurst int
	// MaxInFlight caps the admitted requests not yet finished; 0 (or
	// less) disables the cap.
	MaxInFlight int
	// MaxSources bounds the sources tracked; 0 means DefaultMaxSources.
	MaxSources int
	// Log receives at most one warning every 10 s while requests are
	// throttled; nil discards.
	Log *slog.Logger
	// Meter, when set, counts throttled requests
	// (piggy_secret_broker_throttled, by limit and transport).
	Meter metric.Meter
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Refusal is why a request was not admitted.
type Refusal struct {
	// Limit is PerSource or InFlight.
	Limit string
	// RetryAfter is when the request could be admitted again, at least
	// one second (what HTTP's Retry-After can say).
	RetryAfter time.Duration
}

// Message is the client's message for the refusal; it names no address.
func (r *Refusal) Message() string {
	secs := int64(r.RetryAfter / time.Second)
	if r.Limit == PerSource {
		return "the secret broker is overloaded: too many requests from this address; retry in " + itoa(secs) + "s"
	}
	return "the secret broker is overloaded: too many requests in flight; retry in " + itoa(secs) + "s"
}

// Limiter admits requests. Create it with New; it is safe for concurrent
// use.
type Limiter struct {
	opts     Options
	slots    chan struct{}
	mu       sync.Mutex
	sources  map[netip.Addr]*rate.Limiter
	throttle metric.Int64Counter
	lastWarn atomic.Int64 // unix nanoseconds of the last warning
	refused  atomic.Int64 // refusals since the last warning
}

// New returns a Limiter.
func New(opts Options) (*Limiter, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	if opts.MaxSources <= 0 {
		opts.MaxSources = DefaultMaxSources
	}
	if opts.PerSourceBurst < 1 {
		opts.PerSourceBurst = 1
	}
	l := &Limiter{opts: opts, sources: map[netip.Addr]*rate.Limiter{}}
	if opts.MaxInFlight > 0 {
		l.slots = make(chan struct{}, opts.MaxInFlight)
	}
	if opts.Meter != nil {
		c, err := opts.Meter.Int64Counter("piggy_secret_broker_throttled",
			metric.WithDescription("GetSecrets requests refused before authentication with RESOURCE_EXHAUSTED / HTTP 429, by limit (per_source, in_flight) and transport (https, grpc)."))
		if err != nil {
			return nil, err
		}
		l.throttle = c
	}
	return l, nil
}

// Admit admits one request from src over transport ("https" or "grpc"
// for the metric). When admitted, release must be called once the
// request has finished; otherwise the Refusal says why. An invalid src
// (an address that is not IP) shares one bucket with every other.
func (l *Limiter) Admit(ctx context.Context, src netip.Addr, transport string) (release func(), refused *Refusal) {
	if r := l.perSource(src.Unmap()); r != nil {
		l.refuse(ctx, r, src, transport)
		return nil, r
	}
	if l.slots == nil {
		return func() {}, nil
	}
	select {
	case l.slots <- struct{}{}:
		var once sync.Once
		return func() { once.Do(func() { <-l.slots }) }, nil
	default:
		r := &Refusal{Limit: InFlight, RetryAfter: inFlightRetry}
		l.refuse(ctx, r, src, transport)
		return nil, r
	}
}

// InFlight is the number of admitted requests not yet released.
func (l *Limiter) InFlight() int { return len(l.slots) }

// perSource takes a token of src's bucket, or says when one will be there.
func (l *Limiter) perSource(src netip.Addr) *Refusal {
	if l.opts.PerSourceRate <= 0 {
		return nil
	}
	now := l.opts.Now()
	l.mu.Lock()
	defer l.mu.Unlock()
	b, ok := l.sources[src]
	if !ok {
		if len(l.sources) >= l.opts.MaxSources {
			l.sweep(now)
		}
		b = rate.NewLimiter(rate.Limit(l.opts.PerSourceRate), l.opts.PerSourceBurst)
		l.sources[src] = b
	}
	if b.AllowN(now, 1) {
		return nil
	}
	missing := 1 - b.TokensAt(now)
	wait := time.Duration(math.Ceil(missing / l.opts.PerSourceRate * float64(time.Second)))
	return &Refusal{Limit: PerSource, RetryAfter: roundUpToSecond(wait)}
}

// sweep makes room in the source table. A full bucket is the same as a new
// one, so forgetting it changes nothing; when every bucket is in use (a
// flood from more sources than the table holds), arbitrary ones are
// forgotten until a quarter of the table is free, which gives those
// sources a fresh burst and nothing more.
func (l *Limiter) sweep(now time.Time) {
	burst := float64(l.opts.PerSourceBurst)
	for a, b := range l.sources {
		if b.TokensAt(now) >= burst {
			delete(l.sources, a)
		}
	}
	for a := range l.sources {
		if len(l.sources) < l.opts.MaxSources*3/4 {
			break
		}
		delete(l.sources, a)
	}
}

// Sources is the number of sources tracked.
func (l *Limiter) Sources() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.sources)
}

// refuse counts a refusal and warns at most once every warnEvery.
func (l *Limiter) refuse(ctx context.Context, r *Refusal, src netip.Addr, transport string) {
	if l.throttle != nil {
		l.throttle.Add(ctx, 1, metric.WithAttributes(attribute.String("limit", r.Limit), attribute.String("transport", transport)))
	}
	n := l.refused.Add(1)
	now := l.opts.Now().UnixNano()
	last := l.lastWarn.Load()
	if now-last < int64(warnEvery) || !l.lastWarn.CompareAndSwap(last, now) {
		return
	}
	l.refused.Add(-n)
	l.opts.Log.WarnContext(ctx, "throttling GetSecrets requests before authentication",
		"limit", r.Limit, "source", src.String(), "transport", transport, "throttled", n,
		"in_flight", l.InFlight(), "max_in_flight", l.opts.MaxInFlight,
		"per_source_rate", l.opts.PerSourceRate, "per_source_burst", l.opts.PerSourceBurst)
}

// Source is the IP address of addr (a *net.TCPAddr or "host:port"), or
// the zero Addr when it has none.
func Source(addr net.Addr) netip.Addr {
	if addr == nil {
		return netip.Addr{}
	}
	if t, ok := addr.(*net.TCPAddr); ok {
		if a, ok := netip.AddrFromSlice(t.IP); ok {
			return a.Unmap()
		}
		return netip.Addr{}
	}
	return SourceOf(addr.String())
}

// SourceOf is the IP address of a "host:port" string such as an
// http.Request's RemoteAddr, or the zero Addr when it has none.
func SourceOf(hostport string) netip.Addr {
	ap, err := netip.ParseAddrPort(hostport)
	if err != nil {
		return netip.Addr{}
	}
	return ap.Addr().Unmap()
}

func roundUpToSecond(d time.Duration) time.Duration {
	if d <= time.Second {
		return time.Second
	}
	return (d + time.Second - 1) / time.Second * time.Second
}

func itoa(n int64) string { return strconv.FormatInt(max(n, 1), 10) }
