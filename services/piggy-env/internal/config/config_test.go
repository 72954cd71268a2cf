package config

import (
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func mustURL(t *testing.T, s string) *url.URL {
	t.Helper()
	u, err := url.Parse(s)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

func defaults() Config {
	return Config{
		RequestTimeout: DefaultRequestTimeout,
		Timeout:        DefaultTimeout,
		Proxy:          Proxy{TokenFile: DefaultTokenFile, CAFile: DefaultCAFile},
	}
}

func TestLoad(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    func(c *Config)
	}{
		{name: "empty", environ: nil, want: func(*Config) {}},
		{
			name: "proxy",
			environ: []string{
				"PIGGY_ADDRESS=https://piggy-secret-broker.piggy.svc:8443",
				"PIGGY_UID=abc", "PIGGY_TOKEN_FILE=/t", "PIGGY_CA_FILE=/ca", "PIGGY_SKIP_VERIFY_TLS=true",
				"PIGGY_IGNORE_NO_ENV=1", "PIGGY_DEBUG=TRUE", "PIGGY_DNS_RESOLVER=tcp",
				"PIGGY_INITIAL_DELAY=2s", "PIGGY_RETRIES=3", "PIGGY_REQUEST_TIMEOUT=500ms", "PIGGY_TIMEOUT=1m",
			},
			want: func(c *Config) {
				c.Proxy = Proxy{
					Address: mustURL(t, "https://piggy-secret-broker.piggy.svc:8443"),
					UID:     "abc", TokenFile: "/t", CAFile: "/ca", CAFileNamed: true, SkipVerifyTLS: true,
				}
				c.IgnoreNoEnv, c.Debug, c.DNSResolver = true, true, "tcp"
				c.InitialDelay, c.Retries, c.RequestTimeout, c.Timeout = 2*time.Second, 3, 500*time.Millisecond, time.Minute
				c.RetriesFrom = EnvRetries
			},
		},
		{
			name: "standalone",
			environ: []string{
				"PIGGY_STANDALONE=true", "PIGGY_AWS_SECRET_NAME=ns/sa", "PIGGY_AWS_SECRET_VERSION=AWSPREVIOUS",
				"AWS_REGION=eu-west-1", "AWS_ROLE_ARN=arn:aws:iam::1:role/r", "AWS_WEB_IDENTITY_TOKEN_FILE=/w",
				"AWS_ENDPOINT_URL=http://aws", "AWS_ENDPOINT_URL_STS=http://sts",
			},
			want: func(c *Config) {
				c.Standalone = true
				c.AWS = AWS{
					SecretName: "ns/sa", SecretVersion: "AWSPREVIOUS", Region: "eu-west-1",
					RoleARN: "arn:aws:iam::1:role/r", WebIdentityTokenFile: "/w",
					Endpoints: Endpoints{STS: "http://sts", SecretsManager: "http://aws", SSM: "http://aws"},
				}
			},
		},
		{
			name:    "region precedence",
			environ: []string{"AWS_DEFAULT_REGION=us-east-1", "AWS_REGION=eu-west-1", "PIGGY_AWS_REGION=ap-south-1"},
			want:    func(c *Config) { c.AWS.Region = "ap-south-1" },
		},
		{
			name:    "ignore configured endpoints",
			environ: []string{"AWS_ENDPOINT_URL=http://aws", "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS=true"},
			want:    func(*Config) {},
		},
		{
			name:    "empty values mean defaults",
			environ: []string{"PIGGY_DEBUG=", "PIGGY_TIMEOUT=", "PIGGY_RETRIES=", "PIGGY_NUMBER_OF_RETRY=", "PIGGY_TOKEN_FILE="},
			want:    func(*Config) {},
		},
		{
			name:    "zero initial delay and retries",
			environ: []string{"PIGGY_INITIAL_DELAY=0", "PIGGY_RETRIES=0"},
			want:    func(c *Config) { c.RetriesFrom = EnvRetries },
		},
		{
			// The original piggy-env tried PIGGY_NUMBER_OF_RETRY times in all.
			name:    "original retry setting counts attempts",
			environ: []string{"PIGGY_NUMBER_OF_RETRY=3"},
			want:    func(c *Config) { c.Retries, c.RetriesFrom = 2, EnvNumberOfRetry },
		},
		{
			name:    "original retry setting of 1 is one attempt",
			environ: []string{"PIGGY_NUMBER_OF_RETRY=1"},
			want:    func(c *Config) { c.Retries, c.RetriesFrom = 0, EnvNumberOfRetry },
		},
		{
			name:    "original retry setting of 0 is one attempt",
			environ: []string{"PIGGY_NUMBER_OF_RETRY=0"},
			want:    func(c *Config) { c.Retries, c.RetriesFrom = 0, EnvNumberOfRetry },
		},
		{
			name:    "PIGGY_RETRIES wins",
			environ: []string{"PIGGY_NUMBER_OF_RETRY=5", "PIGGY_RETRIES=1"},
			want:    func(c *Config) { c.Retries, c.RetriesFrom = 1, EnvRetries },
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Load(Lookup(tt.environ))
			if err != nil {
				t.Fatalf("Load: %v", err)
			}
			want := defaults()
			tt.want(&want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("Load mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		// want are substrings of the error, one per expected problem.
		want []string
	}{
		{name: "bool", environ: []string{"PIGGY_DEBUG=yes"}, want: []string{`PIGGY_DEBUG="yes" is not a boolean`}},
		{name: "bool standalone", environ: []string{"PIGGY_STANDALONE=on"}, want: []string{`PIGGY_STANDALONE="on"`}},
		{name: "bool skip verify", environ: []string{"PIGGY_SKIP_VERIFY_TLS=maybe"}, want: []string{`PIGGY_SKIP_VERIFY_TLS="maybe"`}},
		{name: "duration without unit", environ: []string{"PIGGY_INITIAL_DELAY=2"}, want: []string{`PIGGY_INITIAL_DELAY="2" is not a duration`}},
		{name: "negative duration", environ: []string{"PIGGY_INITIAL_DELAY=-1s"}, want: []string{`PIGGY_INITIAL_DELAY="-1s" must be positive`}},
		{name: "zero request timeout", environ: []string{"PIGGY_REQUEST_TIMEOUT=0s"}, want: []string{`PIGGY_REQUEST_TIMEOUT="0s" must be positive`}},
		{name: "zero timeout", environ: []string{"PIGGY_TIMEOUT=0"}, want: []string{`PIGGY_TIMEOUT="0" must be positive`}},
		{name: "negative retries", environ: []string{"PIGGY_RETRIES=-1"}, want: []string{`PIGGY_RETRIES="-1" must not be negative`}},
		{name: "non-integer retries", environ: []string{"PIGGY_RETRIES=1.5"}, want: []string{`PIGGY_RETRIES="1.5" is not an integer`}},
		{name: "huge retries", environ: []string{"PIGGY_RETRIES=99999999999999999999"}, want: []string{`PIGGY_RETRIES="99999999999999999999" is not an integer`}},
		{name: "negative attempts", environ: []string{"PIGGY_NUMBER_OF_RETRY=-1"}, want: []string{`PIGGY_NUMBER_OF_RETRY="-1" must not be negative (it counts attempts`}},
		{name: "non-integer attempts", environ: []string{"PIGGY_NUMBER_OF_RETRY=three"}, want: []string{`PIGGY_NUMBER_OF_RETRY="three" is not an integer (the number of attempts`}},
		{name: "huge attempts", environ: []string{"PIGGY_NUMBER_OF_RETRY=99999999999999999999"}, want: []string{`PIGGY_NUMBER_OF_RETRY="99999999999999999999" is not an integer`}},
		{name: "bad attempts beside good retries", environ: []string{"PIGGY_RETRIES=2", "PIGGY_NUMBER_OF_RETRY=x"}, want: []string{`PIGGY_NUMBER_OF_RETRY="x"`}},
		{name: "resolver", environ: []string{"PIGGY_DNS_RESOLVER=sctp"}, want: []string{`PIGGY_DNS_RESOLVER="sctp"`}},
		{name: "address scheme", environ: []string{"PIGGY_ADDRESS=ftp://x"}, want: []string{`PIGGY_ADDRESS="ftp://x"`}},
		{name: "address without host", environ: []string{"PIGGY_ADDRESS=piggy-broker:8443"}, want: []string{`PIGGY_ADDRESS=`}},
		{
			name:    "all reported together",
			environ: []string{"PIGGY_DEBUG=x", "PIGGY_TIMEOUT=y", "PIGGY_NUMBER_OF_RETRY=-2"},
			want:    []string{"PIGGY_DEBUG", "PIGGY_TIMEOUT", "PIGGY_NUMBER_OF_RETRY"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Load(Lookup(tt.environ))
			if err == nil {
				t.Fatal("Load succeeded, want an error")
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not contain %q", err, w)
				}
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("error %q spans several lines", err)
			}
			if errs, ok := err.(Errors); !ok || len(errs) != len(tt.want) {
				t.Errorf("got %d problems (%v), want %d", len(errs), err, len(tt.want))
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		want    string // substring; "" means valid
	}{
		{name: "proxy ok", environ: []string{"PIGGY_ADDRESS=https://b:8443"}},
		{name: "proxy without address", environ: nil, want: "PIGGY_ADDRESS is not set"},
		{
			name:    "standalone web identity",
			environ: []string{"PIGGY_STANDALONE=true", "PIGGY_AWS_SECRET_NAME=s", "AWS_REGION=r", "AWS_ROLE_ARN=a", "AWS_WEB_IDENTITY_TOKEN_FILE=f"},
		},
		{
			name:    "standalone static keys and ssm",
			environ: []string{"PIGGY_STANDALONE=true", "PIGGY_AWS_SSM_PARAMETER_PATH=/p", "PIGGY_AWS_REGION=r", "AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=s"},
		},
		{
			name:    "standalone without source",
			environ: []string{"PIGGY_STANDALONE=true", "AWS_REGION=r", "AWS_ROLE_ARN=a", "AWS_WEB_IDENTITY_TOKEN_FILE=f"},
			want:    "needs PIGGY_AWS_SECRET_NAME or PIGGY_AWS_SSM_PARAMETER_PATH",
		},
		{
			name:    "standalone without region",
			environ: []string{"PIGGY_STANDALONE=true", "PIGGY_AWS_SECRET_NAME=s", "AWS_ROLE_ARN=a", "AWS_WEB_IDENTITY_TOKEN_FILE=f"},
			want:    "PIGGY_AWS_REGION",
		},
		{
			name:    "standalone without credentials",
			environ: []string{"PIGGY_STANDALONE=true", "PIGGY_AWS_SECRET_NAME=s", "AWS_REGION=r", "AWS_ROLE_ARN=a"},
			want:    "AWS_WEB_IDENTITY_TOKEN_FILE",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := Load(Lookup(tt.environ))
			if err != nil {
				t.Fatal(err)
			}
			err = c.Validate()
			switch {
			case tt.want == "" && err != nil:
				t.Errorf("Validate: %v", err)
			case tt.want != "" && (err == nil || !strings.Contains(err.Error(), tt.want)):
				t.Errorf("Validate = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}

func TestAWSLogValueHidesKeys(t *testing.T) {
	a := AWS{AccessKeyID: "AKIDEXAMPLE", SecretAccessKey: "very-secret", SessionToken: "tok"}
	got := a.LogValue().String()
	for _, s := range []string{"AKIDEXAMPLE", "very-secret", "tok"} {
		if strings.Contains(got, s) {
			t.Errorf("LogValue %q contains %q", got, s)
		}
	}
}

func TestLookupLastWins(t *testing.T) {
	v, ok := Lookup([]string{"A=1", "B", "A=2"})("A")
	if diff := cmp.Diff("2", v); diff != "" || !ok {
		t.Errorf("Lookup(A) = %q, %v (-want +got):\n%s", v, ok, diff)
	}
}

func TestRetrySetting(t *testing.T) {
	for environ, want := range map[string]string{
		"":                        "PIGGY_RETRIES unset",
		"PIGGY_RETRIES=2":         "PIGGY_RETRIES=2",
		"PIGGY_NUMBER_OF_RETRY=3": "PIGGY_NUMBER_OF_RETRY: 3 attempts",
		"PIGGY_NUMBER_OF_RETRY=0": "PIGGY_NUMBER_OF_RETRY: 1 attempt",
	} {
		c, err := Load(Lookup([]string{environ}))
		if err != nil {
			t.Fatalf("%s: %v", environ, err)
		}
		if got := c.RetrySetting(); got != want {
			t.Errorf("%s: RetrySetting() = %q, want %q", environ, got, want)
		}
	}
}
