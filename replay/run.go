package replay

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
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
	// Progress, when not nil, shows a progress bar there (packets, bytes, rate, time left); the CLI
	// passes stderr only when it is a terminal and the output is not JSON.
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
	// Unreadable lists, per capture and link type, the packets replay could not read (UNMANAGED).
	Unreadable []UnreadableLink
	// Disagreements counts packets on which the Go engine and the Decider differ (DecideWithBoth);
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

// Run replays every capture in cfg.Pcaps through r, in order, numbering packets across files. On an
// error (a bad record, ctx done, a failed write) it stops there: every packet decided until then has
// its whole output line written, and the Summary it returns counts exactly those packets.
func Run(ctx context.Context, r *Replayer, cfg RunConfig) (*Summary, error) {
	rn, err := newRunner(r, cfg)
	if err != nil {
		return nil, err
	}
	err = rn.files(ctx)
	return rn.finish(err)
}

// runner is one Run in progress.
type runner struct {
	r    *Replayer
	cfg  RunConfig
	sum  *Summary
	rows rowCounter
	out  *bufio.Writer // nil: no per-packet output
	// acc and drp copy accepted and dropped frames into the --write-* files.
	acc, drp *pcapSink
	res      Result
	line     []byte
	idx      int
	progress *progress
}

func newRunner(r *Replayer, cfg RunConfig) (*runner, error) {
	rn := &runner{r: r, cfg: cfg, sum: &Summary{Rows: map[SummaryKey]int{}}}
	// The --write-* files are created (emptied) only once nothing can make the run fail at once: every
	// capture opens, and none of them is an output, nor are the two outputs one file.
	if err := checkOutputs(cfg); err != nil {
		return nil, err
	}
	var err error
	if rn.acc, err = newPcapSink(cfg.WriteAccepted); err != nil {
		return nil, err
	}
	if rn.drp, err = newPcapSink(cfg.WriteDropped); err != nil {
		return nil, errors.Join(err, rn.acc.close())
	}
	if cfg.Out != nil {
		rn.out = bufio.NewWriterSize(cfg.Out, 64<<10)
		if !cfg.JSON {
			fmt.Fprintf(rn.out, "%6s  %-15s  %-50s  %-9s  %s\n", "#", "TIME", "FLOW", "VERDICT", "DECIDED BY")
		}
	}
	if cfg.Progress != nil {
		rn.progress = newProgress(cfg.Progress, cfg.Pcaps)
	}
	return rn, nil
}

// checkOutputs refuses a run with --write-* files whose captures do not all open or whose outputs would
// overwrite a capture or each other, before any output exists. A capture that is no regular file (a
// pipe) is not opened ahead: what is read from it is gone.
func checkOutputs(cfg RunConfig) error {
	if cfg.WriteAccepted == "" && cfg.WriteDropped == "" {
		return nil
	}
	for _, name := range cfg.Pcaps {
		if fi, err := os.Stat(name); err == nil && !fi.Mode().IsRegular() {
			continue
		}
		src, err := Open(name)
		if err != nil {
			return err
		}
		src.Close()
	}
	outs := []struct{ flag, path string }{{"--write-accepted", cfg.WriteAccepted}, {"--write-dropped", cfg.WriteDropped}}
	for i, o := range outs {
		if o.path == "" {
			continue
		}
		for _, in := range cfg.Pcaps {
			if sameFile(o.path, in) {
				return fmt.Errorf("%s %s: is the capture %s", o.flag, o.path, in)
			}
		}
		for _, other := range outs[i+1:] {
			if other.path != "" && sameFile(o.path, other.path) {
				return fmt.Errorf("%s %s: is %s's file too", o.flag, o.path, other.flag)
			}
		}
	}
	return nil
}

// sameFile tells whether paths a and b name one file: the same file where both exist, else the same
// cleaned absolute path.
func sameFile(a, b string) bool {
	if fa, err := os.Stat(a); err == nil {
		if fb, err := os.Stat(b); err == nil {
			return os.SameFile(fa, fb)
		}
	}
	aa, errA := filepath.Abs(a)
	ab, errB := filepath.Abs(b)
	return errA == nil && errB == nil && aa == ab
}

func (rn *runner) files(ctx context.Context) error {
	for _, name := range rn.cfg.Pcaps {
		if err := rn.file(ctx, name); err != nil {
			return err
		}
	}
	return nil
}

// file replays one capture; frames of link types replay cannot read are counted for the summary.
func (rn *runner) file(ctx context.Context, name string) error {
	src, err := Open(name)
	if err != nil {
		return err
	}
	defer src.Close()
	unreadable := map[int]int{}
	defer func() { rn.sum.addUnreadable(name, unreadable) }()
	for {
		frame, ts, link, err := src.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if rn.idx&0xfff == 0 {
			if err := ctx.Err(); err != nil {
				return fmt.Errorf("replay interrupted at packet %d: %w", rn.idx, err)
			}
			rn.progress.update(src, rn.idx)
		}
		if !linkReadable(link) {
			unreadable[link]++
		}
		if err := rn.packet(frame, ts, link); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	rn.progress.fileDone(src)
	return nil
}

// packet decides one frame and writes what it was told to.
func (rn *runner) packet(frame []byte, ts time.Duration, link int) error {
	res := &rn.res
	if err := rn.r.Decide(rn.idx, ts, link, frame, res); err != nil {
		return err
	}
	rn.sum.Packets++
	if rn.r.opts.DecideWith == DecideWithBoth && res.Disagrees() {
		rn.sum.Disagreements++
		if res.ConntrackOnly() {
			rn.sum.ConntrackDisagreements++
		}
	}
	rn.sum.ByVerdict[res.Verdict]++
	for i := 0; i < res.NChecks; i++ {
		rn.rows.add(&res.Checks[i])
	}
	if rn.cfg.OnResult != nil {
		rn.cfg.OnResult(res)
	}
	if rn.out != nil {
		if rn.cfg.JSON {
			rn.line = AppendJSON(rn.line[:0], rn.r, res)
		} else {
			rn.line = AppendHuman(rn.line[:0], rn.r, res)
		}
		rn.line = append(rn.line, '\n')
		if _, err := rn.out.Write(rn.line); err != nil {
			return fmt.Errorf("write output: %w", err)
		}
	}
	var skipped int
	var err error
	switch res.Verdict {
	case Accept:
		skipped, err = rn.acc.write(frame, ts, link)
	case Drop:
		skipped, err = rn.drp.write(frame, ts, link)
	}
	rn.sum.Skipped += skipped
	rn.idx++
	return err
}

// finish completes the summary and flushes and closes every output, after runErr as well: what was
// decided is written whole.
func (rn *runner) finish(runErr error) (*Summary, error) {
	rn.rows.into(rn.r, rn.sum.Rows)
	errs := []error{runErr}
	if runErr != nil && rn.sum.Packets == 0 {
		rn.out = nil // nothing decided: not even the table's header goes out
	}
	if rn.out != nil {
		if err := rn.out.Flush(); err != nil {
			errs = append(errs, fmt.Errorf("write output: %w", err))
		}
	}
	errs = append(errs, rn.acc.close(), rn.drp.close(), rn.progress.finish(rn.idx))
	return rn.sum, errors.Join(errs...)
}

// linkReadable tells whether replay decodes frames of pcap link type link (packet.Decode calls any
// other not-ip, and it touches no ENI).
func linkReadable(link int) bool {
	switch link {
	case packet.LinkEthernet, packet.LinkSLL, packet.LinkSLL2, packet.LinkRaw, packet.LinkRawBSD, packet.LinkRawBSD2,
		packet.LinkIPv4, packet.LinkIPv6, packet.LinkNull, packet.LinkLoop:
		return true
	}
	return false
}

// UnreadableLink counts the packets of one capture whose link type replay cannot read.
type UnreadableLink struct {
	File     string
	LinkType int
	Packets  int
}

// String says what happened to them and why: "x.pcap: 3 packet(s) of link type 105 (IEEE802_11) …".
func (u UnreadableLink) String() string {
	return fmt.Sprintf("%s: %d packet(s) of link type %d (%s) are UNMANAGED: replay reads Ethernet, Linux cooked (SLL, SLL2), "+
		"raw IP and loopback captures only, so it finds no addresses in them", u.File, u.Packets, u.LinkType, layers.LinkType(u.LinkType))
}

func (s *Summary) addUnreadable(file string, byLink map[int]int) {
	for _, link := range slices.Sorted(maps.Keys(byLink)) {
		s.Unreadable = append(s.Unreadable, UnreadableLink{File: file, LinkType: link, Packets: byLink[link]})
	}
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

// write copies one frame; a frame whose link type differs from the file's is skipped (a pcap file has
// one link type), which it reports as skipped = 1.
func (s *pcapSink) write(frame []byte, ts time.Duration, link int) (skipped int, err error) {
	if s.f == nil {
		return 0, nil
	}
	if s.w == nil {
		s.w = pcapgo.NewWriter(s.bw)
		if err := s.w.WriteFileHeader(maxSnaplen, layers.LinkType(link)); err != nil {
			return 0, fmt.Errorf("write %s: %w", s.name, err)
		}
		s.link = link
	}
	if link != s.link {
		return 1, nil
	}
	ci := gopacket.CaptureInfo{Timestamp: time.Unix(0, int64(ts)), CaptureLength: len(frame), Length: len(frame)}
	if err := s.w.WritePacket(ci, frame); err != nil {
		return 0, fmt.Errorf("write %s: %w", s.name, err)
	}
	return 0, nil
}

func (s *pcapSink) close() error {
	if s.f == nil {
		return nil
	}
	f := s.f
	s.f = nil
	if s.w == nil { // nothing written: still a valid, empty capture
		s.w = pcapgo.NewWriter(s.bw)
		if err := s.w.WriteFileHeader(maxSnaplen, layers.LinkTypeEthernet); err != nil {
			f.Close()
			return fmt.Errorf("write %s: %w", s.name, err)
		}
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
