package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/piggysec/piggy/libs/awslocal"
	"github.com/piggysec/piggy/libs/flagenv"
	"github.com/piggysec/piggy/libs/logging"
)

// settings is the command's configuration, from flags and environment.
type settings struct {
	listen             string
	tlsCert, tlsKey    string
	region, accountID  string
	seedFile           string
	jwksFile, jwksURL  string
	jwksCAFile         string
	jwksTokenFile      string
	issuer, audience   string
	credentialDuration time.Duration
	admin              bool
	logLevel           slog.Level
}

const shutdownTimeout = 10 * time.Second

// envPrefix prefixes the environment variable of every flag
// (-tls-cert → AWSLOCAL_TLS_CERT).
const envPrefix = "AWSLOCAL_"

// parseConfig reads flags, falling back to AWSLOCAL_* environment variables.
func parseConfig(args []string, getenv func(string) string) (settings, error) {
	c := settings{credentialDuration: time.Hour}
	fs := flag.NewFlagSet("piggy-awslocal", flag.ContinueOnError)
	fs.StringVar(&c.listen, "listen", "127.0.0.1:4566", "listen address")
	fs.StringVar(&c.tlsCert, "tls-cert", "", "TLS certificate file (PEM); plain HTTP when empty")
	fs.StringVar(&c.tlsKey, "tls-key", "", "TLS private key file (PEM)")
	fs.StringVar(&c.region, "region", "us-east-1", "the only region requests may be signed for")
	fs.StringVar(&c.accountID, "account-id", "123456789012", "account id in secret and parameter ARNs")
	fs.StringVar(&c.seedFile, "seed", "", "seed file (JSON: secrets, parameters, credentials, trust, allow)")
	fs.StringVar(&c.jwksFile, "jwks-file", "", "JWKS file to verify web identity tokens with")
	fs.StringVar(&c.jwksURL, "jwks-url", "", "JWKS URL (e.g. a kube-apiserver's /openid/v1/jwks), fetched once at start")
	fs.StringVar(&c.jwksCAFile, "jwks-ca-file", "", "CA bundle (PEM) for -jwks-url")
	fs.StringVar(&c.jwksTokenFile, "jwks-token-file", "", "bearer token file for -jwks-url")
	fs.StringVar(&c.issuer, "issuer", "", "required token issuer (with -jwks-file or -jwks-url)")
	fs.StringVar(&c.audience, "audience", "", "required token audience, e.g. sts.amazonaws.com (optional)")
	fs.DurationVar(&c.credentialDuration, "credential-duration", c.credentialDuration, "lifetime of session credentials issued by AssumeRoleWithWebIdentity")
	fs.BoolVar(&c.admin, "admin", false, "serve fault injection and call counters under "+awslocal.AdminPath)
	level := fs.String("log-level", "info", "debug, info, warn or error")
	lookup := func(name string) (string, bool) { v := getenv(name); return v, v != "" }
	if err := flagenv.Parse(fs, envPrefix, args, lookup); err != nil {
		return c, err
	}
	if fs.NArg() > 0 {
		return c, fmt.Errorf("unexpected arguments: %q", fs.Args())
	}
	var ok bool
	if c.logLevel, ok = logging.ParseLevel(*level); !ok {
		return c, fmt.Errorf("log level %q: want debug, info, warn or error", *level)
	}
	switch {
	case (c.tlsCert == "") != (c.tlsKey == ""):
		return c, errors.New("-tls-cert and -tls-key go together")
	case c.jwksFile != "" && c.jwksURL != "":
		return c, errors.New("use -jwks-file or -jwks-url, not both")
	case (c.jwksFile != "" || c.jwksURL != "") != (c.issuer != ""):
		return c, errors.New("-issuer goes with -jwks-file or -jwks-url")
	case c.audience != "" && c.issuer == "":
		return c, errors.New("-audience needs -issuer and a JWKS")
	case c.credentialDuration <= 0:
		return c, errors.New("-credential-duration must be positive")
	}
	return c, nil
}

// seedFile is the JSON seed format.
type seedFile struct {
	// Secrets are stored in order; a name listed again gets a new version
	// (the earlier one becomes AWSPREVIOUS).
	Secrets []struct {
		Name         string  `json:"name"`
		SecretString *string `json:"secretString"`
		SecretBinary []byte  `json:"secretBinary"` // base64
	} `json:"secrets"`
	Parameters []struct {
		Name  string                 `json:"name"`
		Type  awslocal.ParameterType `json:"type"`
		Value string                 `json:"value"`
	} `json:"parameters"`
	Credentials []awslocal.StaticCredentials `json:"credentials"`
	Trust       map[string][]string          `json:"trust"`
	Allow       map[string][]string          `json:"allow"`
}

func readSeed(path string) (seedFile, error) {
	var seed seedFile
	if path == "" {
		return seed, nil
	}
	f, err := os.Open(path)
	if err != nil {
		return seed, fmt.Errorf("seed: %w", err)
	}
	defer f.Close()
	dec := json.NewDecoder(f)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&seed); err != nil {
		return seed, fmt.Errorf("seed %s: %w", path, err)
	}
	return seed, nil
}

func run(ctx context.Context, args []string, getenv func(string) string) error {
	cfg, err := parseConfig(args, getenv)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	}
	if err != nil {
		return err
	}
	log := logging.New(os.Stderr, logging.Options{Level: cfg.logLevel, Service: "piggy-awslocal"})

	seed, err := readSeed(cfg.seedFile)
	if err != nil {
		return err
	}
	opts := awslocal.Options{
		Region:             cfg.region,
		AccountID:          cfg.accountID,
		CredentialDuration: cfg.credentialDuration,
		StaticCredentials:  seed.Credentials,
		Trust:              seed.Trust,
		Allow:              seed.Allow,
		Logger:             log,
	}
	if cfg.issuer != "" {
		jwks, err := loadJWKS(ctx, cfg)
		if err != nil {
			return err
		}
		opts.WebIdentity = &awslocal.WebIdentity{Issuer: cfg.issuer, Audience: cfg.audience, JWKS: jwks}
	}
	srv, err := awslocal.New(opts)
	if err != nil {
		return err
	}
	for _, s := range seed.Secrets {
		if s.SecretBinary != nil {
			_, err = srv.PutSecretBinary(s.Name, s.SecretBinary)
		} else if s.SecretString != nil {
			_, err = srv.PutSecretString(s.Name, *s.SecretString)
		} else {
			err = fmt.Errorf("secret %q: needs secretString or secretBinary", s.Name)
		}
		if err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}
	for _, p := range seed.Parameters {
		if _, err := srv.PutParameter(p.Name, p.Type, p.Value); err != nil {
			return fmt.Errorf("seed: %w", err)
		}
	}

	mux := http.NewServeMux()
	mux.Handle("/", srv)
	if cfg.admin {
		mux.Handle(awslocal.AdminPath, srv.AdminHandler())
	}
	ln, err := net.Listen("tcp", cfg.listen)
	if err != nil {
		return err
	}
	server := &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	serveErr := make(chan error, 1)
	go func() {
		if cfg.tlsCert != "" {
			serveErr <- server.ServeTLS(ln, cfg.tlsCert, cfg.tlsKey)
		} else {
			serveErr <- server.Serve(ln)
		}
	}()
	log.InfoContext(ctx, "piggy-awslocal listening", "addr", ln.Addr().String(), "tls", cfg.tlsCert != "",
		"region", cfg.region, "admin", cfg.admin, "web_identity_verified", opts.WebIdentity != nil,
		"secrets", len(seed.Secrets), "parameters", len(seed.Parameters))

	select {
	case err := <-serveErr:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), shutdownTimeout)
	defer cancel()
	if err := server.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	if err := <-serveErr; !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve: %w", err)
	}
	log.InfoContext(ctx, "piggy-awslocal stopped")
	return nil
}

// loadJWKS reads the JWKS file or fetches the JWKS URL once.
func loadJWKS(ctx context.Context, cfg settings) ([]byte, error) {
	if cfg.jwksFile != "" {
		b, err := os.ReadFile(cfg.jwksFile)
		if err != nil {
			return nil, fmt.Errorf("jwks: %w", err)
		}
		return b, nil
	}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	if cfg.jwksCAFile != "" {
		pem, err := os.ReadFile(cfg.jwksCAFile)
		if err != nil {
			return nil, fmt.Errorf("jwks CA: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("jwks CA %s: no certificates", cfg.jwksCAFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, cfg.jwksURL, nil)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	if cfg.jwksTokenFile != "" {
		token, err := os.ReadFile(cfg.jwksTokenFile)
		if err != nil {
			return nil, fmt.Errorf("jwks token: %w", err)
		}
		req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	}
	resp, err := (&http.Client{Transport: transport}).Do(req)
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("jwks: %w", err)
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("jwks %s: status %s", cfg.jwksURL, resp.Status)
	}
	return body, nil
}
