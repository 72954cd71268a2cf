package deploytest

// Dashboards may only query metrics the services export. The check has
// three steps, each done with the real thing where one exists:
//
//  1. Instruments: every OpenTelemetry instrument the services create is
//     found by parsing their non-test Go sources (go/ast): calls of the
//     Meter's Int64/Float64 Counter, UpDownCounter, Histogram, Gauge and
//     Observable* methods, with the name (a string literal, or a field of
//     the elements of a slice literal ranged over, as the broker's cache
//     counters are) and the unit (metric.WithUnit). A call whose name cannot
//     be resolved fails the test instead of being skipped.
//  2. Prometheus names: each instrument is created with its kind and unit on
//     the MeterProvider of libs/telemetry (the services' own setup, with its
//     OpenTelemetry → Prometheus exporter), given a value, and /metrics is
//     scraped: the metric families it serves (counters with _total,
//     histograms as _bucket/_sum/_count, units as suffixes, plus the Go and
//     process collectors) are the exported names. No naming rule is
//     re-implemented here.
//  3. Queries: the PromQL of every panel target and template variable is
//     reduced to identifiers (string literals, label matchers {...}, range
//     selectors [...], by/without/on/ignoring/group_left/group_right (...)
//     groupings and numbers removed); every identifier that is not a PromQL
//     function, aggregation or keyword is a metric name. Unknown identifiers
//     count as metrics, so an unknown function fails rather than hides a
//     metric. `up` is allowed: Prometheus itself records it per target.

import (
	"context"
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"go.opentelemetry.io/otel/metric"

	"github.com/piggysec/piggy/libs/telemetry"
)

// instrument is one OpenTelemetry instrument found in a service's source.
type instrument struct {
	name, method, unit, at string
}

var instrumentMethods = map[string]bool{}

func init() {
	for _, t := range []string{"Int64", "Float64"} {
		for _, k := range []string{"Counter", "UpDownCounter", "Histogram", "Gauge", "ObservableCounter", "ObservableUpDownCounter", "ObservableGauge"} {
			instrumentMethods[t+k] = true
		}
	}
}

// serviceInstruments parses the non-test Go files of services/*.
func serviceInstruments(t *testing.T) []instrument {
	t.Helper()
	var out []instrument
	root := filepath.Join(repoRoot(), "services")
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && d.Name() == "testdata" {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot(), path)
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			ast.Inspect(fn.Body, func(n ast.Node) bool {
				call, ok := n.(*ast.CallExpr)
				if !ok || len(call.Args) == 0 {
					return true
				}
				sel, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || !instrumentMethods[sel.Sel.Name] {
					return true
				}
				at := rel + ":" + strconv.Itoa(fset.Position(call.Pos()).Line)
				unit := unitOf(call.Args[1:])
				names := resolveName(fn.Body, call.Args[0])
				if len(names) == 0 {
					t.Errorf("%s: cannot resolve the name of a %s instrument; extend the extractor in metrics_test.go", at, sel.Sel.Name)
				}
				for _, name := range names {
					out = append(out, instrument{name: name, method: sel.Sel.Name, unit: unit, at: at})
				}
				return true
			})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}

func stringLit(e ast.Expr) (string, bool) {
	lit, ok := e.(*ast.BasicLit)
	if !ok || lit.Kind != token.STRING {
		return "", false
	}
	s, err := strconv.Unquote(lit.Value)
	return s, err == nil
}

// unitOf finds metric.WithUnit("...") among the options.
func unitOf(opts []ast.Expr) string {
	for _, o := range opts {
		c, ok := o.(*ast.CallExpr)
		if !ok {
			continue
		}
		if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "WithUnit" && len(c.Args) == 1 {
			if u, ok := stringLit(c.Args[0]); ok {
				return u
			}
		}
	}
	return ""
}

// resolveName returns the instrument names an argument stands for: a string
// literal, or v.field where v ranges over a slice composite literal declared
// in the same function (positional or keyed elements of a local struct type).
func resolveName(body *ast.BlockStmt, arg ast.Expr) []string {
	if s, ok := stringLit(arg); ok {
		return []string{s}
	}
	sel, ok := arg.(*ast.SelectorExpr)
	if !ok {
		return nil
	}
	// v.field with v the index expression's base (c.name, counters[i].name).
	var base ast.Expr = sel.X
	if ix, ok := base.(*ast.IndexExpr); ok {
		base = ix.X
	}
	ident, ok := base.(*ast.Ident)
	if !ok {
		return nil
	}
	var sliceName string
	ast.Inspect(body, func(n ast.Node) bool {
		if r, ok := n.(*ast.RangeStmt); ok {
			for _, v := range []ast.Expr{r.Key, r.Value} {
				if id, ok := v.(*ast.Ident); ok && id.Name == ident.Name {
					if x, ok := r.X.(*ast.Ident); ok {
						sliceName = x.Name
					}
				}
			}
		}
		return true
	})
	if sliceName == "" {
		sliceName = ident.Name
	}
	var lit *ast.CompositeLit
	ast.Inspect(body, func(n ast.Node) bool {
		if as, ok := n.(*ast.AssignStmt); ok {
			for i, l := range as.Lhs {
				if id, ok := l.(*ast.Ident); ok && id.Name == sliceName && i < len(as.Rhs) {
					if c, ok := as.Rhs[i].(*ast.CompositeLit); ok {
						lit = c
					}
				}
			}
		}
		return true
	})
	if lit == nil {
		return nil
	}
	field := sel.Sel.Name
	index := fieldIndex(body, lit, field)
	var out []string
	for _, el := range lit.Elts {
		c, ok := el.(*ast.CompositeLit)
		if !ok {
			return nil
		}
		var v ast.Expr
		for i, e := range c.Elts {
			if kv, ok := e.(*ast.KeyValueExpr); ok {
				if k, ok := kv.Key.(*ast.Ident); ok && k.Name == field {
					v = kv.Value
				}
			} else if i == index {
				v = e
			}
		}
		s, ok := stringLit(v)
		if !ok {
			return nil
		}
		out = append(out, s)
	}
	return out
}

// fieldIndex is the position of field in the local struct type of the
// slice literal's elements (-1 when unknown).
func fieldIndex(body *ast.BlockStmt, lit *ast.CompositeLit, field string) int {
	arr, ok := lit.Type.(*ast.ArrayType)
	if !ok {
		return -1
	}
	elt, ok := arr.Elt.(*ast.Ident)
	if !ok {
		return -1
	}
	index := -1
	ast.Inspect(body, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok || ts.Name.Name != elt.Name {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return true
		}
		i := 0
		for _, f := range st.Fields.List {
			for _, n := range f.Names {
				if n.Name == field {
					index = i
				}
				i++
			}
		}
		return false
	})
	return index
}

// exportedNames creates the instruments on libs/telemetry's MeterProvider
// and returns the metric families its Prometheus handler serves.
func exportedNames(t *testing.T, instruments []instrument) map[string]bool {
	t.Helper()
	ctx := context.Background()
	tel, err := telemetry.Setup(ctx, telemetry.Options{ServiceName: "deploytest", Version: "test", Getenv: func(string) string { return "" }})
	if err != nil {
		t.Fatal(err)
	}
	defer tel.Shutdown(ctx)
	m := tel.MeterProvider.Meter("deploytest")
	for _, in := range instruments {
		var err error
		u := metric.WithUnit(in.unit)
		switch in.method {
		case "Int64Counter":
			var c metric.Int64Counter
			if c, err = m.Int64Counter(in.name, u); err == nil {
				c.Add(ctx, 1)
			}
		case "Float64Counter":
			var c metric.Float64Counter
			if c, err = m.Float64Counter(in.name, u); err == nil {
				c.Add(ctx, 1)
			}
		case "Int64UpDownCounter":
			var c metric.Int64UpDownCounter
			if c, err = m.Int64UpDownCounter(in.name, u); err == nil {
				c.Add(ctx, 1)
			}
		case "Float64UpDownCounter":
			var c metric.Float64UpDownCounter
			if c, err = m.Float64UpDownCounter(in.name, u); err == nil {
				c.Add(ctx, 1)
			}
		case "Int64Histogram":
			var h metric.Int64Histogram
			if h, err = m.Int64Histogram(in.name, u); err == nil {
				h.Record(ctx, 1)
			}
		case "Float64Histogram":
			var h metric.Float64Histogram
			if h, err = m.Float64Histogram(in.name, u); err == nil {
				h.Record(ctx, 1)
			}
		case "Int64Gauge":
			var g metric.Int64Gauge
			if g, err = m.Int64Gauge(in.name, u); err == nil {
				g.Record(ctx, 1)
			}
		case "Float64Gauge":
			var g metric.Float64Gauge
			if g, err = m.Float64Gauge(in.name, u); err == nil {
				g.Record(ctx, 1)
			}
		case "Int64ObservableCounter":
			_, err = m.Int64ObservableCounter(in.name, u, metric.WithInt64Callback(observeInt))
		case "Int64ObservableUpDownCounter":
			_, err = m.Int64ObservableUpDownCounter(in.name, u, metric.WithInt64Callback(observeInt))
		case "Int64ObservableGauge":
			_, err = m.Int64ObservableGauge(in.name, u, metric.WithInt64Callback(observeInt))
		case "Float64ObservableCounter":
			_, err = m.Float64ObservableCounter(in.name, u, metric.WithFloat64Callback(observeFloat))
		case "Float64ObservableUpDownCounter":
			_, err = m.Float64ObservableUpDownCounter(in.name, u, metric.WithFloat64Callback(observeFloat))
		case "Float64ObservableGauge":
			_, err = m.Float64ObservableGauge(in.name, u, metric.WithFloat64Callback(observeFloat))
		default:
			t.Fatalf("%s: no case for %s", in.at, in.method)
		}
		if err != nil {
			t.Fatalf("%s: %s(%q): %v", in.at, in.method, in.name, err)
		}
	}
	rec := httptest.NewRecorder()
	tel.MetricsHandler.ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	names := map[string]bool{}
	for _, line := range strings.Split(rec.Body.String(), "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "#" && f[1] == "TYPE" {
			switch f[3] {
			case "histogram":
				for _, s := range []string{"_bucket", "_sum", "_count"} {
					names[f[2]+s] = true
				}
			case "summary":
				names[f[2]+"_sum"], names[f[2]+"_count"], names[f[2]] = true, true, true
			default:
				names[f[2]] = true
			}
		}
	}
	return names
}

func observeInt(_ context.Context, o metric.Int64Observer) error     { o.Observe(1); return nil }
func observeFloat(_ context.Context, o metric.Float64Observer) error { o.Observe(1); return nil }

// promqlWords are the PromQL functions, aggregations and keywords the
// dashboards may use; anything else in an expression is a metric name.
var promqlWords = map[string]bool{}

func init() {
	for _, w := range strings.Fields(`sum min max avg count stddev stdvar topk bottomk quantile count_values group limitk limit_ratio
		by without on ignoring group_left group_right bool and or unless offset
		rate irate increase delta idelta deriv changes resets histogram_quantile histogram_fraction histogram_count histogram_sum
		clamp clamp_min clamp_max abs ceil floor round exp ln log2 log10 sqrt sgn absent absent_over_time
		avg_over_time min_over_time max_over_time sum_over_time count_over_time last_over_time quantile_over_time present_over_time
		label_replace label_join label_values vector scalar time timestamp sort sort_desc predict_linear inf nan`) {
		promqlWords[w] = true
	}
}

var (
	labelValues  = regexp.MustCompile(`label_values\(\s*([^,)]+?)\s*,[^)]*\)`)
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promMatchers = regexp.MustCompile(`\{[^}]*\}`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promNumber   = regexp.MustCompile(`\b[0-9]+(\.[0-9]+)?(e[+-]?[0-9]+)?\b`)
)

// metricNames extracts the metric names a PromQL expression (or a Grafana
// label_values(metric, label) variable query) reads.
func metricNames(expr string) []string {
	e := labelValues.ReplaceAllString(expr, "$1")
	e = promString.ReplaceAllString(e, " ")
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRange.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	e = promNumber.ReplaceAllString(e, " ")
	var out []string
	for _, id := range promIdent.FindAllString(e, -1) {
		if !promqlWords[id] && !strings.HasPrefix(id, "$") {
			out = append(out, id)
		}
	}
	return out
}

type dashboard struct {
	UID        string  `json:"uid"`
	Title      string  `json:"title"`
	Panels     []panel `json:"panels"`
	Templating struct {
		List []struct {
			Name  string `json:"name"`
			Type  string `json:"type"`
			Query any    `json:"query"`
		} `json:"list"`
	} `json:"templating"`
}

type panel struct {
	Title      string         `json:"title"`
	Type       string         `json:"type"`
	Datasource map[string]any `json:"datasource"`
	Targets    []struct {
		Expr string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"`
}

// TestDashboardsQueryExportedMetrics: see the comment at the top of the file.
func TestDashboardsQueryExportedMetrics(t *testing.T) {
	instruments := serviceInstruments(t)
	var declared []string
	for _, in := range instruments {
		declared = append(declared, in.name)
	}
	for _, want := range []string{"piggy_admission_reviews", "piggy_admission_review_duration_seconds"} {
		if !slices.Contains(declared, want) {
			t.Errorf("the extractor missed %s (found %v)", want, declared)
		}
	}
	exported := exportedNames(t, instruments)
	exported["up"] = true // recorded by Prometheus for every scrape target
	t.Logf("%d instruments, %d exported metric names", len(instruments), len(exported))

	files, err := filepath.Glob(filepath.Join(chartDir(), "dashboards", "*.json"))
	if err != nil || len(files) < 3 {
		t.Fatalf("dashboards: %v %v", files, err)
	}
	uids := map[string]string{}
	used := map[string]bool{}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			raw, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			var d dashboard
			dec := json.NewDecoder(strings.NewReader(string(raw)))
			if err := dec.Decode(&d); err != nil {
				t.Fatalf("not JSON: %v", err)
			}
			if d.UID == "" || d.Title == "" {
				t.Errorf("uid %q title %q", d.UID, d.Title)
			}
			if other, dup := uids[d.UID]; dup {
				t.Errorf("uid %s also used by %s", d.UID, other)
			}
			uids[d.UID] = f
			var exprs []string
			var walk func([]panel)
			walk = func(ps []panel) {
				for _, p := range ps {
					walk(p.Panels)
					if p.Type == "row" {
						continue
					}
					if len(p.Targets) == 0 {
						t.Errorf("panel %q has no query", p.Title)
					}
					if p.Datasource["uid"] != "${datasource}" {
						t.Errorf("panel %q does not use the datasource variable: %v", p.Title, p.Datasource)
					}
					for _, tg := range p.Targets {
						exprs = append(exprs, tg.Expr)
					}
				}
			}
			walk(d.Panels)
			for _, v := range d.Templating.List {
				if q, ok := v.Query.(map[string]any); ok {
					if s, ok := q["query"].(string); ok {
						exprs = append(exprs, s)
					}
				}
			}
			for _, e := range exprs {
				names := metricNames(e)
				if len(names) == 0 {
					t.Errorf("query reads no metric: %s", e)
				}
				for _, n := range names {
					used[n] = true
					if !exported[n] {
						t.Errorf("%s queries %s, which no service exports\n  query: %s", filepath.Base(f), n, e)
					}
				}
			}
		})
	}
	// Every service's headline metrics are on a dashboard.
	for _, want := range []string{"piggy_admission_reviews_total", "piggy_secret_broker_requests_total", "piggy_image_resolver_lookups_total"} {
		if exported[want] && !used[want] {
			t.Errorf("no dashboard shows %s", want)
		}
	}
}

// TestMetricNameExtraction pins the PromQL reduction.
func TestMetricNameExtraction(t *testing.T) {
	got := metricNames(`histogram_quantile(0.99, sum by (le, outcome) (rate(piggy_x_bucket{namespace=~"$namespace",a="b{c}"}[$__rate_interval]))) / clamp_min(sum(rate(piggy_y_total[5m])), 1e-9) and on(job) up`)
	want := []string{"piggy_x_bucket", "piggy_y_total", "up"}
	if !slices.Equal(got, want) {
		t.Errorf("got %v, want %v", got, want)
	}
	if got := metricNames(`label_values(piggy_z_total, namespace)`); !slices.Equal(got, []string{"piggy_z_total"}) {
		t.Errorf("label_values: got %v", got)
	}
	if got := metricNames(`sum(rate(piggy_a_total[5m])) * on (pod) group_left (node) kube_pod_info`); !slices.Equal(got, []string{"piggy_a_total", "kube_pod_info"}) {
		t.Errorf("joins: got %v", got)
	}
}
