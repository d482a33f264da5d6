// Command report turns `go test -bench` output into bench/REPORT.md and PNG plots: one table per
// benchmark family, and for every family whose sub-benchmarks carry `rules=N` (or `hosts=N`), a plot of
// each metric against that count. It measures nothing itself; the numbers are the benchmarks'.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

func main() {
	in := flag.String("in", "", "go test -bench output to read (default stdin)")
	out := flag.String("out", "bench/REPORT.md", "markdown report to write; plots go beside it")
	notes := flag.String("notes", "", "markdown file with the written reading, inserted after the machine description")
	var o Options
	flag.Func("compare", "`Title=Family:unit,Family:unit,…`: one plot and table of each family's median over its variants per rule count (repeatable)", func(v string) error {
		c, err := parseCompare(v)
		o.Compare = append(o.Compare, c)
		return err
	})
	flag.Func("ratio", "`Num/Den:unit`: a table of Num's value over Den's for every benchmark both have (repeatable)", func(v string) error {
		r, err := parseRatio(v)
		o.Ratios = append(o.Ratios, r)
		return err
	})
	flag.Func("versus", "`Family:unit:base`: a table of unit for every variant of Family per rule count, each also as a multiple of the base variant's (repeatable)", func(v string) error {
		vs, err := parseVersus(v)
		o.Versus = append(o.Versus, vs)
		return err
	})
	flag.Parse()
	if err := run(*in, *out, *notes, o); err != nil {
		slog.Error("report", "err", err)
		os.Exit(1)
	}
}

// Options add cross-family views to the report.
type Options struct {
	Compare []Compare
	Ratios  []Ratio
	Versus  []Versus
}

// Versus sets each variant of a family against one of them (e.g. every peer against sgsim), per rule count.
type Versus struct{ Family, Unit, Base string }

func parseVersus(v string) (Versus, error) {
	fam, rest, ok := strings.Cut(v, ":")
	i := strings.LastIndex(rest, ":")
	if !ok || i <= 0 || fam == "" || i == len(rest)-1 {
		return Versus{}, fmt.Errorf("-versus %q: want Family:unit:base", v)
	}
	return Versus{fam, rest[:i], rest[i+1:]}, nil
}

// Compare is one combined plot: each series is a family's median value of unit per rule count.
type Compare struct {
	Title  string
	Series []Series
}

// Series names a family and the metric to take from it.
type Series struct{ Family, Unit string }

// Ratio divides Num's unit by Den's for every sub-benchmark name the two families share.
type Ratio struct{ Num, Den, Unit string }

func parseSeries(v string) (Series, error) {
	fam, unit, ok := strings.Cut(v, ":")
	if !ok || fam == "" || unit == "" {
		return Series{}, fmt.Errorf("%q: want Family:unit", v)
	}
	return Series{fam, unit}, nil
}

func parseCompare(v string) (Compare, error) {
	title, list, ok := strings.Cut(v, "=")
	if !ok || title == "" {
		return Compare{}, fmt.Errorf("-compare %q: want Title=Family:unit,…", v)
	}
	c := Compare{Title: title}
	for _, item := range strings.Split(list, ",") {
		sr, err := parseSeries(item)
		if err != nil {
			return Compare{}, fmt.Errorf("-compare: %w", err)
		}
		c.Series = append(c.Series, sr)
	}
	return c, nil
}

func parseRatio(v string) (Ratio, error) {
	fams, unit, ok := strings.Cut(v, ":")
	num, den, ok2 := strings.Cut(fams, "/")
	if !ok || !ok2 || num == "" || den == "" || unit == "" {
		return Ratio{}, fmt.Errorf("-ratio %q: want Num/Den:unit", v)
	}
	return Ratio{num, den, unit}, nil
}

func run(in, out, notes string, o Options) error {
	var r io.Reader = os.Stdin
	if in != "" {
		f, err := os.Open(in)
		if err != nil {
			return fmt.Errorf("open bench output: %w", err)
		}
		defer f.Close()
		r = f
	}
	results, err := Parse(r)
	if err != nil {
		return err
	}
	if len(results) == 0 {
		return errors.New("no benchmark lines in the input")
	}
	var reading []byte
	if notes != "" {
		if reading, err = os.ReadFile(notes); err != nil {
			return fmt.Errorf("read notes: %w", err)
		}
	}
	dir := filepath.Dir(out)
	plots, err := Plot(results, dir)
	if err != nil {
		return err
	}
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("create report: %w", err)
	}
	defer f.Close()
	w := bufio.NewWriter(f)
	views, err := writeViews(results, o, dir)
	if err != nil {
		return err
	}
	writeReport(w, results, plots, string(reading), views)
	if err := w.Flush(); err != nil {
		return fmt.Errorf("write report: %w", err)
	}
	return f.Close()
}

// Result is one benchmark line: its package, full name and every reported metric by unit.
type Result struct {
	Pkg     string
	Name    string // without the "Benchmark" prefix and the -GOMAXPROCS suffix
	Iters   int64
	Metrics map[string]float64
	Units   []string // in reported order
}

// Family is the top-level benchmark name, e.g. "Lookup" of "Lookup/acl1_10k/fast".
func (r Result) Family() string { f, _, _ := strings.Cut(r.Name, "/"); return f }

var (
	benchLine = regexp.MustCompile(`^Benchmark(\S+?)(-\d+)?\s+(\d+)\s+(.*)$`)
	rulesRe   = regexp.MustCompile(`rules=(\d+)|_(\d+)k\b|_(\d+)\b`)
	hostsRe   = regexp.MustCompile(`hosts=(\d+)`)
)

// ruleCount reads the rule count a benchmark name carries, as `rules=N` or a ClassBench-style `_10k`
// (or `_100`) suffix; the matched text is returned so the variant name can leave it out.
func ruleCount(name string) (n float64, matched string, ok bool) {
	m := rulesRe.FindStringSubmatch(name)
	if m == nil {
		return 0, "", false
	}
	switch {
	case m[1] != "":
		v, _ := strconv.ParseFloat(m[1], 64)
		return v, m[0], true
	case m[2] != "":
		v, _ := strconv.ParseFloat(m[2], 64)
		return v * 1000, m[0], true
	}
	v, _ := strconv.ParseFloat(m[3], 64)
	return v, m[0], true
}

// axisOf reads what a benchmark name is plotted over: its rule count (ruleCount) or, for the fleet's
// benchmarks, its `hosts=N`; axis names it ("rules" or "hosts").
func axisOf(name string) (axis string, n float64, matched string, ok bool) {
	if n, matched, ok := ruleCount(name); ok {
		return "rules", n, matched, true
	}
	m := hostsRe.FindStringSubmatch(name)
	if m == nil {
		return "", 0, "", false
	}
	v, _ := strconv.ParseFloat(m[1], 64)
	return "hosts", v, m[0], true
}

// variant splits a rules=N (or hosts=N) benchmark name into N and the rest below the family (e.g.
// "iptables-legacy" of "PeerUDP/iptables-legacy/rules=1000"); the family itself when nothing is left.
func (r Result) variant() (axis string, n float64, variant string, ok bool) {
	axis, n, matched, ok := axisOf(r.Name)
	if !ok {
		return "", 0, "", false
	}
	variant = strings.Trim(strings.ReplaceAll(strings.TrimPrefix(r.Name, r.Family()), matched, ""), "/")
	variant = strings.ReplaceAll(variant, "//", "/")
	if variant == "" {
		variant = r.Family()
	}
	return axis, n, variant, true
}

// Parse reads go test -bench output; `pkg:` lines set the package of the lines after them.
func Parse(r io.Reader) ([]Result, error) {
	var out []Result
	pkg := ""
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for line := 1; sc.Scan(); line++ {
		text := sc.Text()
		if p, ok := strings.CutPrefix(text, "pkg: "); ok {
			pkg = strings.TrimSpace(p)
			continue
		}
		m := benchLine.FindStringSubmatch(text)
		if m == nil {
			continue
		}
		iters, _ := strconv.ParseInt(m[3], 10, 64)
		res := Result{Pkg: pkg, Name: m[1], Iters: iters, Metrics: map[string]float64{}}
		f := strings.Fields(m[4])
		if len(f)%2 != 0 {
			return nil, fmt.Errorf("line %d: odd number of value/unit fields: %q", line, text)
		}
		for i := 0; i < len(f); i += 2 {
			v, err := strconv.ParseFloat(f[i], 64)
			if err != nil {
				return nil, fmt.Errorf("line %d: value %q: %w", line, f[i], err)
			}
			res.Metrics[f[i+1]] = v
			res.Units = append(res.Units, f[i+1])
		}
		out = append(out, res)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read bench output: %w", err)
	}
	return out, nil
}

// Plot writes one PNG per (family, metric) where the family has rules=N (or hosts=N) sub-benchmarks, each
// variant a line over N on a log axis. It returns the PNG file names (relative to dir) by family.
func Plot(results []Result, dir string) (map[string][]string, error) {
	type point struct{ n, v float64 }
	series := map[string]map[string]map[string][]point{} // family → metric → variant → points
	axes := map[string]string{}                          // family → what N counts
	for _, r := range results {
		axis, n, variant, ok := r.variant()
		if !ok {
			continue
		}
		axes[r.Family()] = axis
		for unit, v := range r.Metrics {
			// ns/op of a benchmark that reports its own metrics is the harness's time, not a result.
			if unit == "B/op" || unit == "allocs/op" || unit == "ns/op" && len(r.Units) > 3 {
				continue
			}
			fam := series[r.Family()]
			if fam == nil {
				fam = map[string]map[string][]point{}
				series[r.Family()] = fam
			}
			if fam[unit] == nil {
				fam[unit] = map[string][]point{}
			}
			fam[unit][variant] = append(fam[unit][variant], point{n, v})
		}
	}
	files := map[string][]string{}
	for _, family := range slices.Sorted(maps.Keys(series)) {
		for _, unit := range slices.Sorted(maps.Keys(series[family])) {
			p := plot.New()
			p.Title.Text = family + ": " + unit
			p.X.Label.Text = axes[family]
			p.Y.Label.Text = unit
			p.X.Scale = plot.LogScale{}
			p.X.Tick.Marker = plot.LogTicks{Prec: -1}
			p.Legend.Top = true
			p.Legend.Left = true
			lo, hi := math.Inf(1), math.Inf(-1)
			for _, pts := range series[family][unit] {
				for _, pt := range pts {
					lo, hi = math.Min(lo, pt.v), math.Max(hi, pt.v)
				}
			}
			if lo > 0 && hi/lo > 20 {
				p.Y.Scale = plot.LogScale{}
				p.Y.Tick.Marker = plot.LogTicks{Prec: -1}
			}
			var args []any
			for _, variant := range slices.Sorted(maps.Keys(series[family][unit])) {
				pts := series[family][unit][variant]
				sort.Slice(pts, func(i, j int) bool { return pts[i].n < pts[j].n })
				xy := make(plotter.XYs, len(pts))
				for i, pt := range pts {
					xy[i].X, xy[i].Y = pt.n, pt.v
				}
				args = append(args, variant, xy)
			}
			if err := plotutil.AddLinePoints(p, args...); err != nil {
				return nil, fmt.Errorf("plot %s %s: %w", family, unit, err)
			}
			name := fmt.Sprintf("%s_%s.png", family, sanitize(unit))
			if err := p.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(dir, name)); err != nil {
				return nil, fmt.Errorf("save plot: %w", err)
			}
			files[family] = append(files[family], name)
		}
	}
	return files, nil
}

// writeViews renders the Compare and Ratio views as markdown (plots written into dir). It stays whole:
// one pass writes the views in the order the report shows them.
func writeViews(results []Result, o Options, dir string) (string, error) {
	var b strings.Builder
	for i, c := range o.Compare {
		fmt.Fprintf(&b, "## %s\n\n", c.Title)
		p := plot.New()
		p.Title.Text = c.Title
		p.X.Label.Text = "rules"
		p.X.Scale, p.Y.Scale = plot.LogScale{}, plot.LogScale{}
		p.X.Tick.Marker, p.Y.Tick.Marker = plot.LogTicks{Prec: -1}, plot.LogTicks{Prec: -1}
		p.Legend.Top, p.Legend.Left = true, true
		counts := map[float64]bool{}
		table := map[string]map[float64]float64{}
		var args []any
		for _, sr := range c.Series {
			byN := map[float64][]float64{}
			for _, r := range results {
				n, _, ok := ruleCount(r.Name)
				v, has := r.Metrics[sr.Unit]
				if ok && has && r.Family() == sr.Family && v > 0 {
					byN[n] = append(byN[n], v)
				}
			}
			label := sr.Family + " " + sr.Unit
			table[label] = map[float64]float64{}
			var xy plotter.XYs
			for _, n := range slices.Sorted(maps.Keys(byN)) {
				vs := byN[n]
				sort.Float64s(vs)
				med := vs[len(vs)/2]
				xy = append(xy, plotter.XY{X: n, Y: med})
				table[label][n] = med
				counts[n] = true
			}
			if len(xy) > 0 {
				args = append(args, label, xy)
			}
		}
		if len(args) == 0 {
			b.WriteString("(no matching benchmarks in this run)\n\n")
			continue
		}
		if err := plotutil.AddLinePoints(p, args...); err != nil {
			return "", fmt.Errorf("plot %s: %w", c.Title, err)
		}
		name := fmt.Sprintf("compare_%d.png", i)
		if err := p.Save(7*vg.Inch, 4*vg.Inch, filepath.Join(dir, name)); err != nil {
			return "", fmt.Errorf("save plot: %w", err)
		}
		ns := slices.Sorted(maps.Keys(counts))
		b.WriteString("| series (median over sets) |")
		for _, n := range ns {
			fmt.Fprintf(&b, " %s rules |", formatValue(n))
		}
		b.WriteString("\n|---|" + strings.Repeat("---:|", len(ns)) + "\n")
		for _, label := range slices.Sorted(maps.Keys(table)) {
			fmt.Fprintf(&b, "| %s |", label)
			for _, n := range ns {
				if v, ok := table[label][n]; ok {
					fmt.Fprintf(&b, " %s |", formatValue(v))
				} else {
					b.WriteString(" |")
				}
			}
			b.WriteString("\n")
		}
		fmt.Fprintf(&b, "\n![%s](%s)\n\n", c.Title, name)
	}
	for _, ra := range o.Ratios {
		fmt.Fprintf(&b, "## %s ÷ %s (%s)\n\n| benchmark | %s | %s | ratio |\n|---|---:|---:|---:|\n", ra.Num, ra.Den, ra.Unit, ra.Num, ra.Den)
		den := map[string]float64{}
		for _, r := range results {
			if r.Family() == ra.Den {
				den[strings.TrimPrefix(r.Name, r.Family())] = r.Metrics[ra.Unit]
			}
		}
		for _, r := range results {
			sub := strings.TrimPrefix(r.Name, r.Family())
			if d, ok := den[sub]; r.Family() == ra.Num && ok && d > 0 {
				v := r.Metrics[ra.Unit]
				fmt.Fprintf(&b, "| %s | %s | %s | %s× |\n", strings.TrimPrefix(sub, "/"), formatValue(v), formatValue(d), formatValue(v/d))
			}
		}
		b.WriteString("\n")
	}
	for _, vs := range o.Versus {
		writeVersus(&b, results, vs)
	}
	return b.String(), nil
}

// writeVersus renders one Versus table: a row per variant, a column per rule count, each cell the value
// and its multiple of the base variant's value at that rule count.
func writeVersus(b *strings.Builder, results []Result, vs Versus) {
	fmt.Fprintf(b, "## %s: %s against %s\n\n", vs.Family, vs.Unit, vs.Base)
	vals := map[string]map[float64]float64{}
	counts := map[float64]bool{}
	for _, r := range results {
		_, n, variant, ok := r.variant()
		v, has := r.Metrics[vs.Unit]
		if !ok || !has || r.Family() != vs.Family {
			continue
		}
		if vals[variant] == nil {
			vals[variant] = map[float64]float64{}
		}
		vals[variant][n] = v
		counts[n] = true
	}
	if len(vals) == 0 {
		b.WriteString("(no matching benchmarks in this run)\n\n")
		return
	}
	ns := slices.Sorted(maps.Keys(counts))
	b.WriteString("| " + vs.Unit + " (× " + vs.Base + ") |")
	for _, n := range ns {
		fmt.Fprintf(b, " %s rules |", formatValue(n))
	}
	b.WriteString("\n|---|" + strings.Repeat("---:|", len(ns)) + "\n")
	for _, variant := range slices.Sorted(maps.Keys(vals)) {
		fmt.Fprintf(b, "| %s |", variant)
		for _, n := range ns {
			v, ok := vals[variant][n]
			switch base, hasBase := vals[vs.Base][n]; {
			case !ok:
				b.WriteString(" |")
			case hasBase && base != 0:
				fmt.Fprintf(b, " %s (%s×) |", formatValue(v), formatValue(v/base))
			default:
				fmt.Fprintf(b, " %s |", formatValue(v))
			}
		}
		b.WriteString("\n")
	}
	b.WriteString("\n")
}

func writeReport(w io.Writer, results []Result, plots map[string][]string, reading, views string) {
	fmt.Fprintf(w, "# sgsim benchmark report\n\nGenerated by `make bench` on %s. Every number below comes from the one run\nrecorded in `bench/bench.txt`; nothing is copied from elsewhere.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "## Machine\n\n- CPU: %s\n- cores: %d\n- kernel: %s\n- Go: %s\n\n", cpuModel(), runtime.NumCPU(), kernel(), runtime.Version())
	if reading != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(reading))
	}
	io.WriteString(w, views)
	fmt.Fprintf(w, "# Every benchmark\n\n")
	byFamily := map[string][]Result{}
	var order []string
	for _, r := range results {
		k := r.Pkg + " " + r.Family()
		if _, seen := byFamily[k]; !seen {
			order = append(order, k)
		}
		byFamily[k] = append(byFamily[k], r)
	}
	for _, k := range order {
		rs := byFamily[k]
		fmt.Fprintf(w, "## %s\n\n`%s`\n\n", rs[0].Family(), rs[0].Pkg)
		var units []string
		seen := map[string]bool{}
		for _, r := range rs {
			for _, u := range r.Units {
				if !seen[u] {
					seen[u] = true
					units = append(units, u)
				}
			}
		}
		fmt.Fprintf(w, "| benchmark | %s |\n|---|%s\n", strings.Join(units, " | "), strings.Repeat("---:|", len(units)))
		for _, r := range rs {
			cells := make([]string, len(units))
			for i, u := range units {
				if v, ok := r.Metrics[u]; ok {
					cells[i] = formatValue(v)
				}
			}
			fmt.Fprintf(w, "| %s | %s |\n", r.Name, strings.Join(cells, " | "))
		}
		fmt.Fprintln(w)
		for _, png := range plots[rs[0].Family()] {
			fmt.Fprintf(w, "![%s](%s)\n\n", png, png)
		}
	}
}

func formatValue(v float64) string {
	switch {
	case v == float64(int64(v)) && v < 1e12:
		return strconv.FormatInt(int64(v), 10)
	case v >= 100:
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'g', 4, 64)
}

func sanitize(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' {
			return r
		}
		return '_'
	}, s)
}

func cpuModel() string {
	data, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown"
}

func kernel() string {
	out, err := exec.Command("uname", "-r").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
