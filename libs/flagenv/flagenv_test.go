package flagenv_test

import (
	"flag"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/piggysec/piggy/libs/flagenv"
)

type cfg struct {
	addr  string
	debug bool
	grace time.Duration
}

func parse(args []string, env map[string]string) (cfg, error) {
	var c cfg
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.StringVar(&c.addr, "listen-address", ":8443", "address")
	fs.BoolVar(&c.debug, "debug", false, "debug logs")
	fs.DurationVar(&c.grace, "shutdown-grace", 4*time.Second, "grace")
	err := flagenv.Parse(fs, "", args, func(k string) (string, bool) { v, ok := env[k]; return v, ok })
	return c, err
}

func TestPrecedence(t *testing.T) {
	tests := []struct {
		name string
		args []string
		env  map[string]string
		want cfg
	}{
		{"defaults", nil, nil, cfg{":8443", false, 4 * time.Second}},
		{"env", nil, map[string]string{"LISTEN_ADDRESS": ":1", "DEBUG": "true", "SHUTDOWN_GRACE": "1s"}, cfg{":1", true, time.Second}},
		{"flag beats env", []string{"--listen-address=:2"}, map[string]string{"LISTEN_ADDRESS": ":1"}, cfg{":2", false, 4 * time.Second}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parse(tt.args, tt.env)
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestBadEnvValuesNameTheVariable(t *testing.T) {
	_, err := parse(nil, map[string]string{"DEBUG": "yes please", "SHUTDOWN_GRACE": "soon"})
	if err == nil {
		t.Fatal("no error for unparsable values")
	}
	for _, want := range []string{`invalid value "yes please" for DEBUG`, `invalid value "soon" for SHUTDOWN_GRACE`} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestEnvName(t *testing.T) {
	if got := flagenv.EnvName("PIGGY_", "tls-cert-file"); got != "PIGGY_TLS_CERT_FILE" {
		t.Errorf("EnvName = %q", got)
	}
}
