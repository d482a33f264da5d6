package replay_test

import (
	"context"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
	"github.com/sgsim/sgsim/packet"
	"github.com/sgsim/sgsim/replay"
)

// TestGeneratedCaptures replays every capture testdata/gen writes and checks what each was made to hold.
func TestGeneratedCaptures(t *testing.T) {
	tests := []struct {
		file                          string
		packets, ip, malformed, nonIP int
		links                         []int
	}{
		{"ethernet.pcap", 9, 4, 0, 3, []int{packet.LinkEthernet}},
		{"vlan.pcap", 12, 12, 0, 0, []int{packet.LinkEthernet}},
		{"sll.pcap", 4, 4, 0, 0, []int{packet.LinkSLL}},
		{"sll2.pcap", 4, 4, 0, 0, []int{packet.LinkSLL2}},
		{"raw101.pcap", 4, 4, 0, 0, []int{packet.LinkRaw}},
		{"raw228.pcap", 2, 2, 0, 0, []int{packet.LinkIPv4}},
		{"raw229.pcap", 2, 2, 0, 0, []int{packet.LinkIPv6}},
		{"null.pcap", 4, 4, 0, 0, []int{packet.LinkNull}},
		{"fragments.pcap", 5, 5, 0, 0, []int{packet.LinkEthernet}},
		{"truncated.pcap", 3, 1, 2, 0, []int{packet.LinkEthernet}},
		{"bigsnap.pcap", 1, 1, 0, 0, []int{packet.LinkEthernet}},
		{"mixed-linktypes.pcapng", 4, 4, 0, 0, []int{packet.LinkEthernet, packet.LinkIPv4}},
	}
	r, _, _ := setup(t, replay.Options{ForceENI: "eni-web", ForceDirection: model.Ingress})
	for _, tc := range tests {
		t.Run(tc.file, func(t *testing.T) {
			var ip, mal, nonIP int
			links := map[int]bool{}
			src, err := replay.Open(filepath.Join("..", "testdata", "pcaps", tc.file))
			require.NoError(t, err)
			for {
				_, _, link, err := src.Next()
				if err != nil {
					break
				}
				links[link] = true
			}
			src.Close()
			for _, l := range tc.links {
				assert.True(t, links[l], "link type %d present", l)
			}
			sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{filepath.Join("..", "testdata", "pcaps", tc.file)},
				OnResult: func(res *replay.Result) {
					switch res.Packet.Class {
					case packet.ClassIP:
						ip++
					case packet.ClassMalformed:
						mal++
						assert.Equal(t, dataplane.ReasonMalformed, res.Checks[0].Verdict.Reason)
					case packet.ClassNotIP:
						nonIP++
					}
				}})
			require.NoError(t, err)
			assert.Equal(t, tc.packets, sum.Packets)
			assert.Equal(t, tc.ip, ip, "IP packets")
			assert.Equal(t, tc.malformed, mal, "malformed")
			assert.Equal(t, tc.nonIP, nonIP, "not-ip")
		})
	}
}

// TestDemoCapture replays the demo capture against the demo topology and checks its expectations.
func TestDemoCapture(t *testing.T) {
	st, err := model.LoadTopologyFile(filepath.Join("..", "testdata", "demo.json"))
	require.NoError(t, err)
	e := dataplane.NewEngine(dataplane.ClassifierFactory)
	e.Publish(1, compiler.New(st).CompileAll(), nil)
	r, err := replay.New(st, e, replay.Options{})
	require.NoError(t, err)
	ex, err := replay.LoadExpectations(filepath.Join("..", "testdata", "pcaps", "demo.expect.yaml"))
	require.NoError(t, err)
	sum, err := replay.Run(context.Background(), r, replay.RunConfig{Pcaps: []string{filepath.Join("..", "testdata", "pcaps", "demo.pcap")},
		OnResult: func(res *replay.Result) { ex.Observe(r, res) }})
	require.NoError(t, err)
	assert.Empty(t, ex.Failures())
	assert.Equal(t, [3]int{12, 7, 1}, sum.ByVerdict)
	assert.Equal(t, 1, sum.Rows[replay.SummaryKey{ENI: "eni-web2", Direction: model.Ingress, Reason: dataplane.ReasonRule, Action: model.Drop, SgID: "sg-lockdown", RuleIndex: 0}])
	assert.Equal(t, 2, sum.Rows[replay.SummaryKey{ENI: "eni-web1", Direction: model.Ingress, Reason: dataplane.ReasonDefaultDrop, Action: model.Drop, RuleIndex: -1}])
	assert.Equal(t, 2, sum.Rows[replay.SummaryKey{ENI: "eni-web1", Direction: model.Egress, Reason: dataplane.ReasonEstablished, Action: model.Accept, RuleIndex: -1}])
	total := 0
	for _, n := range sum.Rows {
		total += n
	}
	assert.Equal(t, 21, total, "19 managed packets; #4 and #5 are checked on two ENIs")
}
