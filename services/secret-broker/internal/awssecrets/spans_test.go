package awssecrets

import (
	"strings"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/secretsmanager"
	ssmtypes "github.com/aws/aws-sdk-go-v2/service/ssm/types"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
)

func TestSpansAndMetricsPerAWSCall(t *testing.T) {
	const value = "span-secret-value-42"
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	p := &fakeSSM{params: []ssmtypes.Parameter{
		{Name: aws.String("/team-a/a"), Value: aws.String(value)},
		{Name: aws.String("/team-a/b"), Value: aws.String(value)},
		{Name: aws.String("/team-a/c"), Value: aws.String(value)},
	}}
	sm := &fakeSM{out: &secretsmanager.GetSecretValueOutput{SecretString: aws.String(`{"k":"` + value + `"}`)}}
	f, err := NewFetcher(func(string) Clients { return Clients{SecretsManager: sm, SSM: p} }, FetcherOptions{Regions: []string{"eu-west-3"}, Tracer: tp.Tracer("test"), Meter: mp.Meter("test")})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SecretName: "team-a/web"}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Fetch(t.Context(), Source{Region: "eu-west-3", SSMParameterPath: "/team-a"}); err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, s := range rec.Ended() {
		names = append(names, s.Name())
		for _, kv := range s.Attributes() {
			if strings.Contains(kv.Value.Emit(), value) {
				t.Errorf("span %s attribute %s holds a value", s.Name(), kv.Key)
			}
		}
	}
	if strings.Join(names, ",") != "Secrets Manager.GetSecretValue,SSM.GetParametersByPath,SSM.GetParametersByPath" {
		t.Errorf("spans = %v, want one per AWS call (two SSM pages)", names)
	}
	var rm metricdata.ResourceMetrics
	if err := reader.Collect(t.Context(), &rm); err != nil {
		t.Fatal(err)
	}
	var total int64
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name == "piggy_secret_broker_aws_calls" {
				for _, dp := range m.Data.(metricdata.Sum[int64]).DataPoints {
					total += dp.Value
				}
			}
		}
	}
	if total != 3 {
		t.Errorf("aws calls counted = %d, want 3", total)
	}
}

func FuzzDecodeSecretString(f *testing.F) {
	for _, s := range []string{`{"a":"b","n":1.5,"t":true,"x":null,"o":{},"l":[]}`, `[]`, `"s"`, `{`, `{"a":"\u0000"}`, `{"a":-}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, in string) {
		s, err := DecodeSecretString(in)
		if err != nil {
			// Errors describe the shape, never the content.
			if len(in) > 8 && strings.Contains(err.Error(), in) {
				t.Errorf("error %q quotes the input", err)
			}
			return
		}
		for k := range s.Values {
			if _, bad := s.Invalid[k]; bad {
				t.Errorf("key %q is both valid and invalid", k)
			}
		}
	})
}
