package replay

import (
	"bufio"
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
)

// RunConfig says what to read and what to write.
type RunConfig struct {
	Pcaps []string
	// Out receives one line per packet (human table or, with JSON, SPEC §7 objects); nil = no per-packet
	// output (benchmarks, diff).
	Out  io.Writer
	JSON bool
	// Progress, when not nil, receives a progress line now and then (the CLI passes stderr only when it
	// is a terminal).
	Progress io.Writer
	// WriteAccepted and WriteDropped name pcap files to copy accepted / dropped packets into.
	WriteAccepted, WriteDropped string
	// OnResult, when set, sees every result (expectations, diff).
	OnResult func(res *Result)
}

// SummaryKey is one row of the summary: what decided, where.
type SummaryKey struct {
	ENI       string
	Direction model.Direction
	Reason    dataplane.Reason
	Action    model.Action
	SgID      string
	RuleIndex int
}

// Summary counts what a run decided.
type Summary struct {
	Packets   int
	ByVerdict [3]int
	Rows      map[SummaryKey]int
	// Skipped counts packets not copied to --write-* files because their link type differed from the
	// file's first packet.
	Skipped int
	// Disagreements counts packets on which the Go engine and the Decider differ (EngineCompare);
	// ConntrackDisagreements those of them where only one engine answered from its connection tracker.
	Disagreements, ConntrackDisagreements int
}

// rowCounter counts checks by ENI, direction and deciding entry (or reason) in slices, not a map:
// it runs for every check of every packet.
type rowCounter struct {
	enis [][2]*dirRows
}

type dirRows struct {
	byEntry  []int
	entryKey []SummaryKey // provenance of each counted entry
	byReason [8][2]int    // reason × action, for checks no table entry decided
}

func (rc *rowCounter) add(c *Check) {
	for len(rc.enis) <= c.ENI {
		rc.enis = append(rc.enis, [2]*dirRows{})
	}
	d := rc.enis[c.ENI][c.Direction&1]
	if d == nil {
		d = &dirRows{}
		rc.enis[c.ENI][c.Direction&1] = d
	}
	v := &c.Verdict
	if v.Entry < 0 || v.Reason == dataplane.ReasonEstablished {
		d.byReason[v.Reason&7][v.Action&1]++
		return
	}
	for len(d.byEntry) <= v.Entry {
		d.byEntry = append(d.byEntry, 0)
		d.entryKey = append(d.entryKey, SummaryKey{})
	}
	if d.byEntry[v.Entry] == 0 {
		d.entryKey[v.Entry] = SummaryKey{Direction: c.Direction, Reason: v.Reason, Action: v.Action, SgID: v.SgID, RuleIndex: v.RuleIndex}
	}
	d.byEntry[v.Entry]++
}

func (rc *rowCounter) into(r *Replayer, rows map[SummaryKey]int) {
	for eni, dirs := range rc.enis {
		for dir, d := range dirs {
			if d == nil {
				continue
			}
			for e, n := range d.byEntry {
				if n > 0 {
					k := d.entryKey[e]
					k.ENI = r.enis[eni]
					rows[k] += n
				}
			}
			for reason, byAction := range d.byReason {
				for action, n := range byAction {
					if n > 0 {
						rows[SummaryKey{ENI: r.enis[eni], Direction: model.Direction(dir), Reason: dataplane.Reason(reason),
							Action: model.Action(action), RuleIndex: -1}] += n
					}
				}
			}
		}
	}
}

// Run replays every capture in cfg.Pcaps through r, in order, numbering packets across files.
func Run(ctx context.Context, r *Replayer, cfg RunConfig) (*Summary, error) {
	sum := &Summary{Rows: map[SummaryKey]int{}}
	var rows rowCounter
	var out *bufio.Writer
	if cfg.Out != nil {
		out = bufio.NewWriterSize(cfg.Out, 64<<10)
		if !cfg.JSON {
			fmt.Fprintf(out, "%6s  %-15s  %-50s  %-9s  %s\n", "#", "TIME", "FLOW", "VERDICT", "DECIDED BY")
		}
	}
	acc, err := newPcapSink(cfg.WriteAccepted)
	if err != nil {
		return nil, err
	}
	defer acc.close()
	drp, err := newPcapSink(cfg.WriteDropped)
	if err != nil {
		return nil, err
	}
	defer drp.close()

	var res Result
	var line []byte
	idx := 0
	for _, name := range cfg.Pcaps {
		src, err := Open(name)
		if err != nil {
			return sum, err
		}
		size := int64(0)
		if st, err := os.Stat(name); err == nil {
			size = st.Size()
		}
		for {
			frame, ts, link, err := src.Next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				src.Close()
				return sum, err
			}
			if idx&0xffff == 0 {
				if err := ctx.Err(); err != nil {
					src.Close()
					return sum, fmt.Errorf("replay interrupted at packet %d: %w", idx, err)
				}
				if cfg.Progress != nil && idx > 0 {
					progress(cfg.Progress, src, size, idx)
				}
			}
			if err := r.Decide(idx, ts, link, frame, &res); err != nil {
				src.Close()
				return sum, fmt.Errorf("%s: %w", name, err)
			}
			sum.Packets++
			if r.opts.Engine == EngineCompare && res.Disagrees() {
				sum.Disagreements++
				if res.ConntrackOnly() {
					sum.ConntrackDisagreements++
				}
			}
			sum.ByVerdict[res.Verdict]++
			for i := 0; i < res.NChecks; i++ {
				rows.add(&res.Checks[i])
			}
			if cfg.OnResult != nil {
				cfg.OnResult(&res)
			}
			if out != nil {
				if cfg.JSON {
					line = AppendJSON(line[:0], r, &res)
				} else {
					line = AppendHuman(line[:0], r, &res)
				}
				line = append(line, '\n')
				if _, err := out.Write(line); err != nil {
					src.Close()
					return sum, fmt.Errorf("write output: %w", err)
				}
			}
			switch res.Verdict {
			case Accept:
				sum.Skipped += acc.write(frame, ts, link)
			case Drop:
				sum.Skipped += drp.write(frame, ts, link)
			}
			idx++
		}
		src.Close()
	}
	if cfg.Progress != nil {
		fmt.Fprintf(cfg.Progress, "\r\033[Kreplay: %d packets done\n", idx)
	}
	rows.into(r, sum.Rows)
	if out != nil {
		if err := out.Flush(); err != nil {
			return sum, fmt.Errorf("write output: %w", err)
		}
	}
	if err := acc.close(); err != nil {
		return sum, err
	}
	return sum, drp.close()
}

func progress(w io.Writer, src *Source, size int64, idx int) {
	pos, err := src.f.Seek(0, io.SeekCurrent)
	pct := 0.0
	if err == nil && size > 0 {
		pct = 100 * float64(pos) / float64(size)
	}
	const width = 30
	n := int(pct / 100 * width)
	n = min(max(n, 0), width)
	fmt.Fprintf(w, "\r\033[K%s [%s%s] %5.1f%%  %d packets", src.name, strings.Repeat("#", n), strings.Repeat(".", width-n), pct, idx)
}

// checkJSON is one check in SPEC §7 form.
type checkJSON struct {
	ENI       string `json:"eni"`
	Direction string `json:"direction"`
	Verdict   string `json:"verdict"`
	SgID      string `json:"sgId,omitempty"`
	RuleIndex *int   `json:"ruleIndex,omitempty"`
	Reason    string `json:"reason"`
}

// PacketJSON is one packet's SPEC §7 line.
type PacketJSON struct {
	Index   int         `json:"index"`
	Verdict string      `json:"verdict"`
	Checks  []checkJSON `json:"checks"`
}

// ToJSON converts a result to its SPEC §7 object.
func ToJSON(r *Replayer, res *Result) PacketJSON {
	p := PacketJSON{Index: res.Index, Verdict: res.Verdict.String(), Checks: make([]checkJSON, res.NChecks)}
	for i := 0; i < res.NChecks; i++ {
		c := &res.Checks[i]
		j := checkJSON{ENI: r.enis[c.ENI], Direction: c.Direction.String(), Verdict: c.Verdict.Action.String(), Reason: c.Verdict.Reason.String()}
		if c.Verdict.Reason == dataplane.ReasonRule {
			ri := c.Verdict.RuleIndex
			j.SgID, j.RuleIndex = c.Verdict.SgID, &ri
		}
		p.Checks[i] = j
	}
	return p
}

// AppendJSON appends res as one SPEC §7 JSON object (no newline).
func AppendJSON(b []byte, r *Replayer, res *Result) []byte {
	b = append(b, `{"index":`...)
	b = strconv.AppendInt(b, int64(res.Index), 10)
	b = append(b, `,"verdict":"`...)
	b = append(b, res.Verdict.String()...)
	b = append(b, `","checks":[`...)
	for i := 0; i < res.NChecks; i++ {
		c := &res.Checks[i]
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"eni":`...)
		b = strconv.AppendQuote(b, r.enis[c.ENI])
		b = append(b, `,"direction":"`...)
		b = append(b, c.Direction.String()...)
		b = append(b, `","verdict":"`...)
		b = append(b, c.Verdict.Action.String()...)
		b = append(b, '"')
		if c.Verdict.Reason == dataplane.ReasonRule {
			b = append(b, `,"sgId":`...)
			b = strconv.AppendQuote(b, c.Verdict.SgID)
			b = append(b, `,"ruleIndex":`...)
			b = strconv.AppendInt(b, int64(c.Verdict.RuleIndex), 10)
		}
		b = append(b, `,"reason":"`...)
		b = append(b, c.Verdict.Reason.String()...)
		b = append(b, `"}`...)
	}
	return append(b, "]}"...)
}

// FlowString renders a decoded packet's flow for people: "tcp 198.18.1.10:40000 > 198.18.2.20:80".
func FlowString(d *packet.Decoded) string {
	switch d.Class {
	case packet.ClassARP:
		return "arp"
	case packet.ClassNotIP:
		return "not-ip (" + d.Detail + ")"
	case packet.ClassMalformed:
		return "malformed (" + d.Detail + ")"
	}
	var b strings.Builder
	b.WriteString(protoName(d.Proto))
	b.WriteByte(' ')
	endpoint(&b, d.Src.String(), d.Src.Is6(), d.SrcPort, d.HasPorts && !d.IsICMP)
	b.WriteString(" > ")
	endpoint(&b, d.Dst.String(), d.Dst.Is6(), d.DstPort, d.HasPorts && !d.IsICMP)
	if d.IsICMP {
		fmt.Fprintf(&b, " type %d code %d", d.ICMPType, d.ICMPCode)
	}
	if d.Fragment {
		if d.FirstFragment {
			b.WriteString(" [first fragment]")
		} else {
			b.WriteString(" [fragment]")
		}
	}
	return b.String()
}

func endpoint(b *strings.Builder, addr string, v6 bool, port uint16, hasPort bool) {
	if !hasPort {
		b.WriteString(addr)
		return
	}
	if v6 {
		b.WriteString("[" + addr + "]")
	} else {
		b.WriteString(addr)
	}
	b.WriteByte(':')
	b.WriteString(strconv.Itoa(int(port)))
}

// protoName is model.IPProtocolName, with unnamed protocols written "proto-N" so a flow never starts
// with a bare number.
func protoName(p uint8) string {
	n := model.IPProtocolName(p)
	if n[0] >= '0' && n[0] <= '9' {
		return "proto-" + n
	}
	return n
}

// CheckString renders one check: "eni-web1 ingress ACCEPT sg-web rule 1" or "… DROP default-drop".
func CheckString(r *Replayer, c *Check) string {
	return r.enis[c.ENI] + " " + c.Direction.String() + " " + VerdictString(&c.Verdict)
}

// AppendHuman appends one row of the human table.
func AppendHuman(b []byte, r *Replayer, res *Result) []byte {
	t := time.Unix(0, int64(res.Time)).UTC().Format("15:04:05.000000")
	by := make([]string, res.NChecks)
	for i := 0; i < res.NChecks; i++ {
		by[i] = CheckString(r, &res.Checks[i])
	}
	return fmt.Appendf(b, "%6d  %-15s  %-50s  %-9s  %s", res.Index, t, FlowString(&res.Packet), res.Verdict, strings.Join(by, "; "))
}

// WriteSummary prints the per-ENI, per-direction, per-rule counts.
func WriteSummary(w io.Writer, s *Summary) {
	fmt.Fprintf(w, "\n%d packets: %d accepted, %d dropped, %d unmanaged\n", s.Packets, s.ByVerdict[Accept], s.ByVerdict[Drop], s.ByVerdict[Unmanaged])
	keys := make([]SummaryKey, 0, len(s.Rows))
	for k := range s.Rows {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b SummaryKey) int {
		return cmp.Or(cmp.Compare(a.ENI, b.ENI), cmp.Compare(a.Direction, b.Direction), cmp.Compare(a.SgID, b.SgID),
			cmp.Compare(a.RuleIndex, b.RuleIndex), cmp.Compare(a.Reason, b.Reason))
	})
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ENI\tDIRECTION\tDECIDED BY\tACTION\tPACKETS")
	for _, k := range keys {
		by := k.Reason.String()
		if k.Reason == dataplane.ReasonRule {
			by = k.SgID + " rule " + strconv.Itoa(k.RuleIndex)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\n", k.ENI, k.Direction, by, k.Action, s.Rows[k])
	}
	tw.Flush()
	if s.Skipped > 0 {
		fmt.Fprintf(w, "%d packets not written to --write-* files: their link type differs from the file's first packet\n", s.Skipped)
	}
}

// pcapSink copies frames into a pcap file with the link type of the first frame.
type pcapSink struct {
	name string
	f    *os.File
	bw   *bufio.Writer
	w    *pcapgo.Writer
	link int
}

func newPcapSink(name string) (*pcapSink, error) {
	if name == "" {
		return &pcapSink{}, nil
	}
	f, err := os.Create(name)
	if err != nil {
		return nil, fmt.Errorf("create %s: %w", name, err)
	}
	return &pcapSink{name: name, f: f, bw: bufio.NewWriter(f), link: -1}, nil
}

func (s *pcapSink) write(frame []byte, ts time.Duration, link int) (skipped int) {
	if s.f == nil {
		return 0
	}
	if s.w == nil {
		s.w = pcapgo.NewWriter(s.bw)
		if err := s.w.WriteFileHeader(maxSnaplen, layers.LinkType(link)); err != nil {
			return 1
		}
		s.link = link
	}
	if link != s.link {
		return 1
	}
	ci := gopacket.CaptureInfo{Timestamp: time.Unix(0, int64(ts)), CaptureLength: len(frame), Length: len(frame)}
	if err := s.w.WritePacket(ci, frame); err != nil {
		return 1
	}
	return 0
}

func (s *pcapSink) close() error {
	if s.f == nil {
		return nil
	}
	f := s.f
	s.f = nil
	if s.w == nil { // nothing written: still a valid, empty capture
		s.w = pcapgo.NewWriter(s.bw)
		_ = s.w.WriteFileHeader(maxSnaplen, layers.LinkTypeEthernet)
	}
	if err := s.bw.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("write %s: %w", s.name, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", s.name, err)
	}
	return nil
}

// MarshalJSONLine is a convenience for tests: the SPEC §7 line of res via encoding/json.
func MarshalJSONLine(r *Replayer, res *Result) ([]byte, error) {
	return json.Marshal(ToJSON(r, res))
}
