package throttle

import (
	"context"
	"net"
	"net/netip"
	"sync"
	"testing"
	"time"

	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
)

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

var (
	attacker = netip.MustParseAddr("10.0.0.66")
	pod      = netip.MustParseAddr("10.0.0.7")
)

func TestPerSource(t *testing.T) {
	ctx := context.Background()
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l, err := New(Options{PerSourceRate: 2, PerSourceBurst: 5, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		release, r := l.Admit(ctx, attacker, "https")
		if r != nil {
			t.Fatalf("request %d of the burst refused: %+v", i, r)
		}
		release()
	}
	_, r := l.Admit(ctx, attacker, "https")
	if r == nil || r.Limit != PerSource {
		t.Fatalf("request past the burst = %+v, want a per-source refusal", r)
	}
	// 2/s: the next token is half a second away; hints are whole seconds.
	if r.RetryAfter != time.Second {
		t.Errorf("RetryAfter = %s, want 1s", r.RetryAfter)
	}
	if msg := r.Message(); msg != "the secret broker is overloaded: too many requests from this address; retry in 1s" {
		t.Errorf("message = %q", msg)
	}
	// Refused requests take no token: a flood does not push the hint out.
	for range 100 {
		if _, r := l.Admit(ctx, attacker, "https"); r == nil {
			t.Fatal("a refused source was admitted without waiting")
		}
	}
	// Another source is not affected.
	if _, r := l.Admit(ctx, pod, "grpc"); r != nil {
		t.Errorf("another source refused: %+v", r)
	}
	// IPv4-mapped IPv6 is the same source.
	if _, r := l.Admit(ctx, netip.AddrFrom16(attacker.As16()), "grpc"); r == nil {
		t.Error("the IPv4-mapped form of a throttled address was admitted")
	}
	clk.advance(500 * time.Millisecond)
	if _, r := l.Admit(ctx, attacker, "https"); r != nil {
		t.Errorf("refused after the hinted wait: %+v", r)
	}
}

func TestPerSourceHintCoversTheDeficit(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l, err := New(Options{PerSourceRate: 0.25, PerSourceBurst: 1, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	if _, r := l.Admit(context.Background(), attacker, "grpc"); r != nil {
		t.Fatal(r)
	}
	_, r := l.Admit(context.Background(), attacker, "grpc")
	if r == nil || r.RetryAfter != 4*time.Second {
		t.Fatalf("refusal = %+v, want a hint of 4s at 0.25/s", r)
	}
	clk.advance(r.RetryAfter)
	if _, r := l.Admit(context.Background(), attacker, "grpc"); r != nil {
		t.Errorf("refused after waiting the hint: %+v", r)
	}
}

func TestInFlight(t *testing.T) {
	ctx := context.Background()
	l, err := New(Options{MaxInFlight: 2})
	if err != nil {
		t.Fatal(err)
	}
	r1, refused := l.Admit(ctx, pod, "https")
	if refused != nil {
		t.Fatal(refused)
	}
	r2, refused := l.Admit(ctx, attacker, "grpc")
	if refused != nil {
		t.Fatal(refused)
	}
	_, refused = l.Admit(ctx, pod, "https")
	if refused == nil || refused.Limit != InFlight || refused.RetryAfter != time.Second {
		t.Fatalf("third request = %+v, want an in-flight refusal with a 1s hint", refused)
	}
	if l.InFlight() != 2 {
		t.Errorf("InFlight = %d, want 2", l.InFlight())
	}
	r1()
	r1() // a second release gives back nothing
	if l.InFlight() != 1 {
		t.Errorf("InFlight after one release (twice) = %d, want 1", l.InFlight())
	}
	r3, refused := l.Admit(ctx, pod, "https")
	if refused != nil {
		t.Fatalf("refused with a free slot: %+v", refused)
	}
	r2()
	r3()
	if l.InFlight() != 0 {
		t.Errorf("InFlight after all releases = %d", l.InFlight())
	}
}

func TestDisabled(t *testing.T) {
	l, err := New(Options{})
	if err != nil {
		t.Fatal(err)
	}
	for range 10_000 {
		release, r := l.Admit(context.Background(), attacker, "https")
		if r != nil {
			t.Fatalf("refused with every limit off: %+v", r)
		}
		release()
	}
	if l.Sources() != 0 {
		t.Errorf("sources tracked with the per-source limit off: %d", l.Sources())
	}
}

func TestSourceTableIsBounded(t *testing.T) {
	clk := &clock{t: time.Unix(1_700_000_000, 0)}
	l, err := New(Options{PerSourceRate: 1, PerSourceBurst: 2, MaxSources: 100, Now: clk.now})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	// A throttled source stays throttled while the table has room.
	for range 3 {
		l.Admit(ctx, attacker, "grpc")
	}
	for i := range 50 {
		l.Admit(ctx, netip.AddrFrom4([4]byte{10, 1, 0, byte(i)}), "grpc")
	}
	if _, r := l.Admit(ctx, attacker, "grpc"); r == nil {
		t.Fatal("attacker admitted again although its bucket is empty")
	}
	// Many more sources than the table holds: it stays bounded.
	for i := range 10_000 {
		l.Admit(ctx, netip.AddrFrom4([4]byte{10, 2, byte(i >> 8), byte(i)}), "grpc")
		if n := l.Sources(); n > 100 {
			t.Fatalf("%d sources tracked, more than the bound of 100", n)
		}
	}
	// Idle (full) buckets are forgotten first and lose nothing.
	clk.advance(time.Minute)
	for i := range 200 {
		if _, r := l.Admit(ctx, netip.AddrFrom4([4]byte{10, 3, 0, byte(i)}), "grpc"); r != nil {
			t.Fatalf("a new source was refused: %+v", r)
		}
	}
}

func TestSource(t *testing.T) {
	tests := []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.ParseIP("10.0.0.7"), Port: 5000}, "10.0.0.7"},
		{&net.TCPAddr{IP: net.ParseIP("::ffff:10.0.0.7"), Port: 5000}, "10.0.0.7"},
		{&net.TCPAddr{IP: net.ParseIP("fd00::1"), Port: 5000}, "fd00::1"},
		{&net.UnixAddr{Name: "/run/x.sock", Net: "unix"}, "invalid IP"},
		{nil, "invalid IP"},
	}
	for _, tt := range tests {
		if got := Source(tt.addr).String(); got != tt.want {
			t.Errorf("Source(%v) = %s, want %s", tt.addr, got, tt.want)
		}
	}
	if got := SourceOf("[::ffff:192.0.2.1]:443").String(); got != "192.0.2.1" {
		t.Errorf("SourceOf = %s", got)
	}
	if got := SourceOf("not an address"); got.IsValid() {
		t.Errorf("SourceOf(junk) = %s, want invalid", got)
	}
}

func TestThrottledMetric(t *testing.T) {
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	l, err := New(Options{PerSourceRate: 1, PerSourceBurst: 1, MaxInFlight: 1, Meter: mp.Meter("t")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	release, _ := l.Admit(ctx, pod, "https")
	l.Admit(ctx, attacker, "grpc") // in flight
	l.Admit(ctx, pod, "https")     // per source
	l.Admit(ctx, pod, "https")     // per source
	release()
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		t.Fatal(err)
	}
	got := map[string]int64{}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != "piggy_secret_broker_throttled" {
				continue
			}
			for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
				limit, _ := dp.Attributes.Value("limit")
				transport, _ := dp.Attributes.Value("transport")
				got[limit.AsString()+"/"+transport.AsString()] += dp.Value
			}
		}
	}
	if got["in_flight/grpc"] != 1 || got["per_source/https"] != 2 || len(got) != 2 {
		t.Errorf("throttled = %v, want in_flight/grpc 1 and per_source/https 2", got)
	}
}

func TestForwarders(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	f := NewForwarders()
	c, err := f.Dial(context.Background(), ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server := <-accepted
	defer server.Close()
	if !f.Has(server.RemoteAddr()) {
		t.Error("the gateway's connection is not known by the address the server sees")
	}
	other, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	if f.Has(other.LocalAddr()) {
		t.Error("a connection the gateway did not open is taken for the gateway's")
	}
	c.Close()
	c.Close()
	if f.Has(server.RemoteAddr()) {
		t.Error("a closed connection is still known")
	}
	var nilSet *Forwarders
	if nilSet.Has(server.RemoteAddr()) {
		t.Error("a nil set has a connection")
	}
}
