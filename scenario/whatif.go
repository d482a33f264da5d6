package scenario

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"slices"
	"strings"

	"github.com/sgsim/sgsim/replay"
)

// ParseCall reads one what-if API call:
//
//	tencent:Action?name=value&name=value   (a Tencent v2 call; the first account signs it)
//	huawei:SGID:add|remove:PORT[,PORT…]    (a Huawei port action)
func ParseCall(s string) (Step, error) {
	kind, rest, ok := strings.Cut(s, ":")
	if !ok {
		return Step{}, fmt.Errorf("call %q: want tencent:Action?k=v&… or huawei:SGID:add|remove:PORT,…", s)
	}
	switch kind {
	case "tencent":
		action, query, _ := strings.Cut(rest, "?")
		if action == "" {
			return Step{}, fmt.Errorf("call %q: no Action", s)
		}
		vals, err := url.ParseQuery(query)
		if err != nil {
			return Step{}, fmt.Errorf("call %q: parameters: %w", s, err)
		}
		params := map[string]string{}
		for k, v := range vals {
			if len(v) != 1 {
				return Step{}, fmt.Errorf("call %q: parameter %s given %d times", s, k, len(v))
			}
			params[k] = v[0]
		}
		return Step{Name: s, Tencent: &TencentCall{Action: action, Params: params}}, nil
	case "huawei":
		f := strings.Split(rest, ":")
		if len(f) != 3 || f[0] == "" || f[2] == "" {
			return Step{}, fmt.Errorf("call %q: want huawei:SGID:add|remove:PORT[,PORT…]", s)
		}
		return Step{Name: s, Huawei: &HuaweiCall{SgID: f[0], Action: f[1], Ports: strings.Split(f[2], ",")}}, nil
	}
	return Step{}, fmt.Errorf("call %q: unknown dialect %q: want tencent or huawei", s, kind)
}

// FlowChange is a flow whose verdict differs after the calls, with what decided on each side.
type FlowChange struct {
	Flow                 string
	Before, After        replay.Verdict
	BeforeBy, AfterBy    string
	Packets, FirstPacket int
}

type decision struct {
	verdict replay.Verdict
	by      int32 // interned "decided by" text
}

// Diff replays pcaps against the topology, applies calls through the daemon's API code path, replays
// again with fresh connection tracking, and returns every flow whose verdict changed. An API call that
// fails is an error: the what-if would be meaningless.
func Diff(ctx context.Context, topology string, pcaps []string, calls []Step, stateless bool, log io.Writer) (_ []FlowChange, err error) {
	name, err := json.Marshal(topology)
	if err != nil {
		return nil, fmt.Errorf("topology %q: %w", topology, err)
	}
	sr := &run{path: "diff", dir: ".", out: log, forced: map[string]*replay.Replayer{},
		s: &Scenario{Topology: name, Stateless: stateless}}
	if err := sr.setup(ctx); err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, sr.close()) }()
	texts := map[string]int32{}
	var textList []string
	intern := func(s string) int32 {
		if i, ok := texts[s]; ok {
			return i
		}
		texts[s] = int32(len(textList))
		textList = append(textList, s)
		return texts[s]
	}
	record := func(r *replay.Replayer, into *[]decision, flows *[]string) func(*replay.Result) {
		return func(res *replay.Result) {
			*into = append(*into, decision{verdict: res.Verdict, by: intern(checks(r, res))})
			if flows != nil {
				f := replay.FlowString(&res.Packet)
				// Fragments belong to their flow.
				f = strings.TrimSuffix(strings.TrimSuffix(f, " [fragment]"), " [first fragment]")
				*flows = append(*flows, f)
			}
		}
	}
	var before, after []decision
	var flows []string
	if _, err := replay.Run(ctx, sr.r, replay.RunConfig{Pcaps: pcaps, OnResult: record(sr.r, &before, &flows)}); err != nil {
		return nil, err
	}
	for i := range calls {
		where := fmt.Sprintf("--apply %s", calls[i].Name)
		if err := sr.step(ctx, where, &calls[i]); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		if len(sr.fails) > 0 {
			return nil, fmt.Errorf("%s", strings.Join(sr.fails, "; "))
		}
	}
	r2, err := replay.New(sr.state, sr.ctrl.Engine(), replay.Options{Stateless: stateless})
	if err != nil {
		return nil, err
	}
	if _, err := replay.Run(ctx, r2, replay.RunConfig{Pcaps: pcaps, OnResult: record(r2, &after, nil)}); err != nil {
		return nil, err
	}
	return changedFlows(before, after, flows, textList), nil
}

// changedFlows groups the packets whose verdict differs between before and after by flow and what
// decided on each side, in order of each group's first packet.
func changedFlows(before, after []decision, flows, texts []string) []FlowChange {
	type key struct {
		flow     string
		b, a     replay.Verdict
		bBy, aBy int32
	}
	changes := map[key]*FlowChange{}
	for i := range before {
		b, a := before[i], after[i]
		if b.verdict == a.verdict {
			continue
		}
		k := key{flows[i], b.verdict, a.verdict, b.by, a.by}
		c, ok := changes[k]
		if !ok {
			c = &FlowChange{Flow: flows[i], Before: b.verdict, After: a.verdict, BeforeBy: texts[b.by], AfterBy: texts[a.by], FirstPacket: i}
			changes[k] = c
		}
		c.Packets++
	}
	out := make([]FlowChange, 0, len(changes))
	for _, c := range changes {
		out = append(out, *c)
	}
	slices.SortFunc(out, func(x, y FlowChange) int { return x.FirstPacket - y.FirstPacket })
	return out
}

// WriteDiff prints flow changes for people.
func WriteDiff(w io.Writer, changes []FlowChange) {
	if len(changes) == 0 {
		fmt.Fprintln(w, "no flow changes its verdict")
		return
	}
	fmt.Fprintf(w, "%d flow(s) change verdict:\n", len(changes))
	for _, c := range changes {
		fmt.Fprintf(w, "  %s  (%d packet(s), first #%d)\n    before: %-9s %s\n    after:  %-9s %s\n",
			c.Flow, c.Packets, c.FirstPacket, c.Before, c.BeforeBy, c.After, c.AfterBy)
	}
}
