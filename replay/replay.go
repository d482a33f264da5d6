// Package replay decides captured packets the way the dataplane would: it maps each frame to the
// managed ENIs it touches, checks it on the sender's egress and the receiver's ingress against one
// table snapshot, tracks connections, and reports every verdict with the rule or reason behind it.
// It also reads captures and checks expectations; its caller gives it tables (scenarios and the what-if
// diff, which need the write path, are package scenario).
package replay

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"time"

	"github.com/sgsim/sgsim/conntrack"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
)

// Verdict of a whole packet (SPEC §7).
type Verdict uint8

const (
	Accept Verdict = iota
	Drop
	Unmanaged
)

var verdictNames = [...]string{"ACCEPT", "DROP", "UNMANAGED"}

func (v Verdict) String() string {
	if int(v) < len(verdictNames) {
		return verdictNames[v]
	}
	return "UNKNOWN"
}

// MarshalText writes the SPEC name.
func (v Verdict) MarshalText() ([]byte, error) { return []byte(v.String()), nil }

// ParseVerdict reads ACCEPT, DROP or UNMANAGED in any case.
func ParseVerdict(s string) (Verdict, bool) {
	for i, n := range verdictNames {
		if strings.EqualFold(s, n) {
			return Verdict(i), true
		}
	}
	return 0, false
}

// TableSource gives the tables in force; *dataplane.Engine is one.
type TableSource interface {
	Snapshot() *dataplane.Snapshot
}

// Check is one ENI/direction decision of a packet.
type Check struct {
	ENI       int // index into Replayer.ENIs()
	Direction model.Direction
	Verdict   dataplane.Verdict
	// Other is Options.Decider's verdict on the same check when Compared (DecideWithBoth).
	Other    dataplane.Verdict
	Compared bool
}

// Result is the decision of one packet. Checks[:NChecks] are valid.
type Result struct {
	Index   int
	Time    time.Duration // capture timestamp since the Unix epoch
	Verdict Verdict
	Checks  [2]Check
	NChecks int
	Packet  packet.Decoded
}

// Options change how packets are decided.
type Options struct {
	// ForceENI, when set, makes every packet one check on that ENI in ForceDirection, for captures taken
	// on one interface.
	ForceENI       string
	ForceDirection model.Direction
	// Stateless evaluates every packet against the rules: no connection tracking (SPEC §3).
	Stateless bool
	// MaxFlows bounds the connection table (0 = conntrack.DefaultMaxEntries).
	MaxFlows int
	// DecideWith says whether the Go engine, Decider, or both decide (DecideWithDecider and DecideWithBoth need
	// Decider). With a Decider, the tracker that matters is the Decider's: it sees packets at replay
	// speed, so if it ages flows on its own clock rather than capture timestamps (the eBPF program
	// does), captures with idle gaps longer than SPEC §3's timeouts can differ from the Go engine.
	DecideWith DecideWith
	Decider    Decider
}

type fragKey struct {
	zone     uint32
	dir      model.Direction
	proto    uint8
	id       uint32
	src, dst netip.Addr
}

// maxFrags bounds the remembered first-fragment verdicts; beyond it the table is cleared (fragments of
// a datagram arrive close together, so forgetting old ones costs little).
const maxFrags = 1 << 16

// Replayer decides packets one at a time. Not safe for concurrent use.
type Replayer struct {
	src  TableSource
	opts Options
	enis []string
	// Addresses are keyed by plain integers and arrays, not netip.Addr: hashing those is several
	// times cheaper, and this lookup runs twice per packet.
	byIP4   map[uint32][]uint32
	byIP6   map[[16]byte][]uint32
	byMAC   map[[6]byte]uint32
	forced  int
	ct      *conntrack.Table
	frags   map[fragKey]dataplane.Verdict
	snap    *dataplane.Snapshot // snapshot of the packet being decided, for recheck
	recheck conntrack.Recheck
	pkt     dataplane.Packet
	decided uint64
	eth     []byte // the packet as an Ethernet frame, for the Decider (nil: it has none)
	ethBuf  []byte
	err     error // the Decider's failure on the packet being decided
	dstats  DeciderStats
}

// DeciderStats counts the checks the Decider decided and those it did not run.
type DeciderStats struct {
	Asked int
	// NotRun counts checks of packets that have no Ethernet form (link header truncated, link type
	// replay does not read) or whose frame the Decider refused (ErrRefused) while the decoder calls it
	// malformed or not-ip: the decoder's verdict stands for them.
	NotRun int
}

// DecideWith says what decides r's checks.
func (r *Replayer) DecideWith() DecideWith { return r.opts.DecideWith }

// DeciderStats returns how many checks went to the Decider.
func (r *Replayer) DeciderStats() DeciderStats { return r.dstats }

// New returns a Replayer over the ENIs of st, deciding against the tables src serves. It fails when
// opts.ForceENI names no ENI of st.
func New(st *model.State, src TableSource, opts Options) (*Replayer, error) {
	switch {
	case opts.DecideWith > DecideWithBoth:
		return nil, fmt.Errorf("replay engine %d: unknown", opts.DecideWith)
	case opts.DecideWith != DecideWithGo && opts.Decider == nil:
		return nil, fmt.Errorf("replay engine %d needs a Decider", opts.DecideWith)
	}
	r := &Replayer{src: src, opts: opts, frags: make(map[fragKey]dataplane.Verdict)}
	if !opts.Stateless && opts.DecideWith != DecideWithDecider {
		r.ct = conntrack.New(opts.MaxFlows)
	}
	r.recheck = r.stillAccepted
	if err := r.SetState(st); err != nil {
		return nil, err
	}
	return r, nil
}

// ENIs returns the ENI IDs results refer to by index.
func (r *Replayer) ENIs() []string { return r.enis }

// ConnStats returns the connection tracker's counters (zero when stateless).
func (r *Replayer) ConnStats() conntrack.Stats {
	if r.ct == nil {
		return conntrack.Stats{}
	}
	return r.ct.Stats()
}

// SetState re-reads ENI addresses after a change. ENI indexes stay stable for ENIs already known, so
// tracked flows keep their zone.
func (r *Replayer) SetState(st *model.State) error {
	idx := make(map[string]uint32, len(r.enis))
	for i, id := range r.enis {
		idx[id] = uint32(i)
	}
	r.byIP4 = make(map[uint32][]uint32)
	r.byIP6 = make(map[[16]byte][]uint32)
	r.byMAC = make(map[[6]byte]uint32)
	for _, id := range st.ENIIDs() {
		i, ok := idx[id]
		if !ok {
			i = uint32(len(r.enis))
			r.enis = append(r.enis, id)
			idx[id] = i
		}
		eni, _ := st.ENI(id)
		for _, a := range eni.Addrs() {
			if a.Is4() {
				k := ip4Key(a)
				r.byIP4[k] = append(r.byIP4[k], i)
			} else {
				k := a.As16()
				r.byIP6[k] = append(r.byIP6[k], i)
			}
		}
		if m := eni.MAC(); len(m) == 6 {
			r.byMAC[[6]byte(m)] = i
		}
	}
	r.forced = -1
	if r.opts.ForceENI != "" {
		i, ok := idx[r.opts.ForceENI]
		if _, live := st.ENI(r.opts.ForceENI); !ok || !live {
			return fmt.Errorf("--eni %q: no such network interface in the topology", r.opts.ForceENI)
		}
		r.forced = int(i)
	}
	return nil
}

func ip4Key(a netip.Addr) uint32 {
	b := a.As4()
	return uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
}

// ShareFrom makes r use base's connection table, fragment memory and ENI numbering, so a forced
// replayer and an unforced one decide the same flows.
func (r *Replayer) ShareFrom(base *Replayer) error {
	r.ct, r.frags = base.ct, base.frags
	r.enis, r.byIP4, r.byIP6, r.byMAC = base.enis, base.byIP4, base.byIP6, base.byMAC
	r.forced = -1
	for i, id := range r.enis {
		if id == r.opts.ForceENI {
			r.forced = i
		}
	}
	if r.opts.ForceENI != "" && r.forced < 0 {
		return fmt.Errorf("eni %q: no such network interface", r.opts.ForceENI)
	}
	return nil
}

// lookupENI maps an address to a managed ENI; when several ENIs share it, the frame's MAC decides.
func (r *Replayer) lookupENI(a netip.Addr, mac *[6]byte, hasMAC bool) (uint32, bool) {
	var c []uint32
	if a.Is4() {
		c = r.byIP4[ip4Key(a)]
	} else {
		c = r.byIP6[a.As16()]
	}
	switch {
	case len(c) == 1:
		return c[0], true
	case len(c) > 1 && hasMAC:
		if i, ok := r.byMAC[*mac]; ok {
			for _, x := range c {
				if x == i {
					return i, true
				}
			}
		}
	}
	return 0, false
}

// Decide decodes frame (of pcap link type link) and decides it into res. It fails only when the
// Decider does.
func (r *Replayer) Decide(index int, ts time.Duration, link int, frame []byte, res *Result) error {
	packet.Decode(link, frame, &res.Packet)
	r.eth = nil
	if r.opts.DecideWith != DecideWithGo {
		r.eth = toEthernet(link, frame, r.ethBuf)
		if len(r.eth) > 0 && link != packet.LinkEthernet {
			r.ethBuf = r.eth
		}
	}
	r.decide(index, ts, res)
	if r.err != nil {
		return fmt.Errorf("packet %d: %w", index, r.err)
	}
	return nil
}

func (r *Replayer) decide(index int, ts time.Duration, res *Result) {
	r.err = nil
	res.Index, res.Time, res.NChecks = index, ts, 0
	d := &res.Packet
	r.snap = r.src.Snapshot()
	if r.ct != nil {
		if r.decided++; r.decided&0xfff == 0 {
			r.ct.Expire(ts) // sweep idle flows now and then rather than only on lookup
		}
	}
	if r.forced >= 0 {
		r.check(uint32(r.forced), r.opts.ForceDirection, ts, res)
	} else {
		var from, to uint32
		var fromOK, toOK bool
		if d.Class == packet.ClassIP || d.Class == packet.ClassND {
			from, fromOK = r.lookupENI(d.Src, &d.SrcMAC, d.HasMAC)
			to, toOK = r.lookupENI(d.Dst, &d.DstMAC, d.HasMAC)
			if d.Class == packet.ClassND && d.HasMAC {
				// ND uses link-local and multicast addresses no ENI lists: the MACs say whose it is.
				if !fromOK {
					from, fromOK = r.byMAC[d.SrcMAC]
				}
				if !toOK {
					to, toOK = r.byMAC[d.DstMAC]
				}
			}
		} else if d.HasMAC {
			// Not IP (or unreadable IP): only the MACs say whose frame it is.
			from, fromOK = r.byMAC[d.SrcMAC]
			to, toOK = r.byMAC[d.DstMAC]
		}
		if fromOK {
			r.check(from, model.Egress, ts, res)
		}
		// The receiver's ingress is checked only when the packet leaves the sender: a packet the
		// sender's egress drops never arrives, and must not start a flow there.
		if toOK && (res.NChecks == 0 || res.Checks[0].Verdict.Action == model.Accept) && r.err == nil {
			r.check(to, model.Ingress, ts, res)
		}
	}
	res.Verdict = Unmanaged
	if res.NChecks > 0 {
		res.Verdict = Accept
		for i := 0; i < res.NChecks; i++ {
			if res.Checks[i].Verdict.Action != model.Accept {
				res.Verdict = Drop
				break
			}
		}
	}
}

func noRule(a model.Action, why dataplane.Reason) dataplane.Verdict {
	return dataplane.Verdict{Action: a, Reason: why, RuleIndex: -1, Entry: -1}
}

// check decides one ENI/direction and appends it to res.
func (r *Replayer) check(eni uint32, dir model.Direction, ts time.Duration, res *Result) {
	c := &res.Checks[res.NChecks]
	res.NChecks++
	c.ENI, c.Direction, c.Compared = int(eni), dir, false
	if r.opts.DecideWith == DecideWithDecider {
		if ran := r.ask(eni, dir, &res.Packet, &c.Verdict); ran || r.err != nil {
			return
		}
	}
	r.checkGo(c, eni, dir, ts, &res.Packet)
	if r.opts.DecideWith == DecideWithBoth && r.err == nil {
		c.Compared = r.ask(eni, dir, &res.Packet, &c.Other)
	}
}

// ask has the Decider decide the packet's frame as eni sees it in dir, into v. It returns false when
// the Decider did not run: the packet has no Ethernet form, or the Decider refused a frame the decoder
// calls malformed or not-ip (verdicts that need neither tables nor state, so the decoder's stands).
// Other failures land in r.err.
func (r *Replayer) ask(eni uint32, dir model.Direction, d *packet.Decoded, v *dataplane.Verdict) bool {
	if r.eth == nil {
		r.dstats.NotRun++
		return false
	}
	id := r.enis[eni]
	dec, err := r.opts.Decider.Decide(r.eth, id, dir)
	if errors.Is(err, ErrRefused) && (d.Class == packet.ClassMalformed || d.Class == packet.ClassNotIP) {
		r.dstats.NotRun++
		return false
	}
	if err != nil {
		r.err = fmt.Errorf("%s %s: %w", id, dir, err)
		return false
	}
	r.dstats.Asked++
	tabs, _ := r.snap.ENI(id)
	if *v, err = explain(tabs, id, dir, dec); err != nil {
		r.err = err
		return false
	}
	return true
}

// checkGo decides one check with the Go engine.
func (r *Replayer) checkGo(c *Check, eni uint32, dir model.Direction, ts time.Duration, d *packet.Decoded) {
	switch d.Class {
	case packet.ClassARP:
		c.Verdict = noRule(model.Accept, dataplane.ReasonARP)
		return
	case packet.ClassND:
		c.Verdict = noRule(model.Accept, dataplane.ReasonND)
		return
	case packet.ClassNotIP:
		c.Verdict = noRule(model.Drop, dataplane.ReasonNotIP)
		return
	case packet.ClassMalformed:
		c.Verdict = noRule(model.Drop, dataplane.ReasonMalformed)
		return
	}
	tabs, ok := r.snap.ENI(r.enis[eni])
	if !ok { // the ENI has no tables (removed since): nothing lets the packet through
		c.Verdict = noRule(model.Drop, dataplane.ReasonNoSG)
		return
	}
	var fk fragKey
	if d.Fragment {
		fk = fragKey{zone: eni, dir: dir, proto: d.Proto, id: d.FragID, src: d.Src, dst: d.Dst}
		if !d.FirstFragment {
			if v, ok := r.frags[fk]; ok {
				c.Verdict = v
				return
			}
		}
	}
	gen := r.snap.Generation
	cdir := conntrack.Direction(dir)
	var key conntrack.Key
	tracked := r.ct != nil && (!d.Fragment || d.FirstFragment)
	if tracked {
		key = conntrack.KeyOf(eni, cdir, &d.Tuple)
		if r.ct.Reply(key, d.TCPFlags, ts, gen, r.recheck) ||
			(d.ICMPError && d.HasInner && r.ct.Related(eni, cdir, &d.Inner, ts, gen, r.recheck)) {
			c.Verdict = noRule(model.Accept, dataplane.ReasonEstablished)
			r.rememberFrag(d, fk, c.Verdict)
			return
		}
	}
	// A field, not a local: the matcher is an interface, so a local would escape to the heap.
	r.pkt = toMatch(dir, d.Proto, d.Src, d.Dst, d.DstPort, d.HasPorts)
	c.Verdict = tabs.Match(dir, &r.pkt)
	if tracked {
		if c.Verdict.Action == model.Accept {
			r.ct.Track(key, d.TCPFlags, ts, gen)
		} else {
			r.ct.Cut(key)
		}
	}
	r.rememberFrag(d, fk, c.Verdict)
}

func (r *Replayer) rememberFrag(d *packet.Decoded, fk fragKey, v dataplane.Verdict) {
	if !d.FirstFragment {
		return
	}
	if len(r.frags) >= maxFrags {
		clear(r.frags)
	}
	r.frags[fk] = v
}

// toMatch orients a packet for matching (SPEC §2): the remote is the source on ingress, the destination
// on egress; the port is the destination port, known only for TCP and UDP.
func toMatch(dir model.Direction, proto uint8, src, dst netip.Addr, dport uint16, hasPorts bool) dataplane.Packet {
	p := dataplane.Packet{Remote: src, Proto: proto, Port: dport}
	if dir == model.Egress {
		p.Remote = dst
	}
	p.HasPort = hasPorts && (proto == packet.ProtoTCP || proto == packet.ProtoUDP)
	if !p.HasPort {
		p.Port = 0
	}
	return p
}

// stillAccepted re-decides a tracked flow's original packet against the snapshot in force.
func (r *Replayer) stillAccepted(k *conntrack.Key) bool {
	if int(k.Zone) >= len(r.enis) {
		return false
	}
	tabs, ok := r.snap.ENI(r.enis[k.Zone])
	if !ok {
		return false
	}
	dir := model.Direction(k.Dir)
	hasPorts := k.Proto == packet.ProtoTCP || k.Proto == packet.ProtoUDP
	r.pkt = toMatch(dir, k.Proto, k.Src, k.Dst, k.DstPort, hasPorts)
	return tabs.Match(dir, &r.pkt).Action == model.Accept
}
