// Command report turns `go test -bench` output into bench/REPORT.md and PNG plots: one table per
// benchmark family, and for every family whose sub-benchmarks carry `rules=N`, a plot of each metric
// against the rule count. It measures nothing itself; the numbers are the benchmarks'.
package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
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
	flag.Parse()
	if err := run(*in, *out, *notes); err != nil {
		slog.Error("report", "err", err)
		os.Exit(1)
	}
}

func run(in, out, notes string) error {
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
	writeReport(w, results, plots, string(reading))
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
	rulesRe   = regexp.MustCompile(`rules=(\d+)`)
)

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

// Plot writes one PNG per (family, metric) where the family has rules=N sub-benchmarks, each variant a
// line over N on a log axis. It returns the PNG file names (relative to dir) by family.
func Plot(results []Result, dir string) (map[string][]string, error) {
	type point struct{ n, v float64 }
	series := map[string]map[string]map[string][]point{} // family → metric → variant → points
	for _, r := range results {
		m := rulesRe.FindStringSubmatch(r.Name)
		if m == nil {
			continue
		}
		n, _ := strconv.ParseFloat(m[1], 64)
		variant := strings.Trim(strings.ReplaceAll(strings.TrimPrefix(r.Name, r.Family()), m[0], ""), "/")
		variant = strings.ReplaceAll(variant, "//", "/")
		if variant == "" {
			variant = r.Family()
		}
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
	for _, family := range sortedKeys(series) {
		for _, unit := range sortedKeys(series[family]) {
			p := plot.New()
			p.Title.Text = family + ": " + unit
			p.X.Label.Text = "rules"
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
			for _, variant := range sortedKeys(series[family][unit]) {
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

func writeReport(w io.Writer, results []Result, plots map[string][]string, reading string) {
	fmt.Fprintf(w, "# sgsim benchmark report\n\nGenerated by `make bench` on %s. Every number below comes from the one run\nrecorded in `bench/bench.txt`; nothing is copied from elsewhere.\n\n", time.Now().UTC().Format("2006-01-02 15:04 MST"))
	fmt.Fprintf(w, "## Machine\n\n- CPU: %s\n- cores: %d\n- kernel: %s\n- Go: %s\n\n", cpuModel(), runtime.NumCPU(), kernel(), runtime.Version())
	if reading != "" {
		fmt.Fprintf(w, "%s\n\n", strings.TrimSpace(reading))
	}
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

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
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
