package peers

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/model"
)

const streamPort = 9999

// needNetns skips when the machine cannot build the path (not root, no iproute2), unless
// SGSIM_REQUIRE_KERNEL=1 makes that a failure.
func needNetns(t testing.TB, tools ...string) {
	t.Helper()
	missing := ""
	if os.Geteuid() != 0 {
		missing = "root"
	}
	for _, tool := range append([]string{"ip"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil && missing == "" {
			missing = tool
		}
	}
	if missing == "" {
		return
	}
	if os.Getenv("SGSIM_REQUIRE_KERNEL") == "1" {
		t.Fatalf("needs %s (SGSIM_REQUIRE_KERNEL=1)", missing)
	}
	t.Skipf("needs %s", missing)
}

func TestScripts(t *testing.T) {
	rules := []Rule{
		{Src: netip.MustParsePrefix("10.0.0.0/8"), Proto: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 90}, Accept: true},
		{Src: netip.MustParsePrefix("10.1.0.0/16"), Proto: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 90}, Accept: true},
		{Src: netip.MustParsePrefix("10.2.0.0/16"), Proto: model.ProtoTCP, Ports: model.PortRange{Lo: 80, Hi: 90}, Accept: true},
		{Src: netip.MustParsePrefix("0.0.0.0/0"), Proto: model.ProtoICMP, Accept: false},
		{Src: netip.MustParsePrefix("192.0.2.0/24"), Proto: model.ProtoAll, Accept: true},
	}
	ipt := string(IptablesScript("fw0", rules))
	assert.Contains(t, ipt, "-A INPUT -i fw0 -j sgsim-sg\n")
	assert.Contains(t, ipt, "-A sgsim-sg -s 10.0.0.0/8 -p tcp --dport 80:90 -j ACCEPT\n")
	assert.Contains(t, ipt, "-A sgsim-sg -s 0.0.0.0/0 -p icmp -j DROP\n")
	assert.Contains(t, ipt, "-A sgsim-sg -s 192.0.2.0/24 -j ACCEPT\n")
	assert.True(t, strings.HasSuffix(ipt, "-A sgsim-sg -j DROP\nCOMMIT\n"), "chain must end in the implicit DROP")

	plain := string(NftScript("fw0", rules, false))
	assert.Equal(t, 6, strings.Count(plain, "    ip saddr")+strings.Count(plain, "    drop"), "one nft rule per rule, plus the final drop")
	sets := string(NftScript("fw0", rules, true))
	// The three tcp 80-90 accepts merge; 10.1/16 and 10.2/16 are inside 10/8 and drop out of the set.
	assert.Contains(t, sets, "ip saddr 10.0.0.0/8 tcp dport 80-90 accept\n")
	assert.NotContains(t, sets, "10.1.0.0/16")
	assert.Contains(t, sets, "ip saddr 0.0.0.0/0 ip protocol icmp drop\n")
}

func TestSyntheticTableEndsWithStreamRule(t *testing.T) {
	src := netip.MustParseAddr("198.18.100.1")
	ts, err := SyntheticTables(100, src, streamPort, 1)
	require.NoError(t, err)
	tab := ts.Ingress
	require.Len(t, tab.Entries, 101) // 100 rules + implicit drop
	rules := RulesFromTable(tab)
	last := rules[len(rules)-1]
	assert.Equal(t, netip.PrefixFrom(src, 32), last.Src)
	for _, r := range rules[:len(rules)-1] {
		assert.False(t, r.Src.Contains(src), "no earlier rule may decide the stream: %v", r.Src)
	}
}

// TestPeersEnforce loads each peer with the same table on a real veth path and checks that the stream is
// delivered when its rule says ACCEPT and not at all when it says DROP.
func TestPeersEnforce(t *testing.T) {
	needNetns(t, "iptables-legacy-restore", "iptables-nft-restore", "nft")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	p, err := NewPath(ctx)
	require.NoError(t, err)
	defer func() { assert.NoError(t, p.Close()) }()
	defer func() { assert.NoError(t, p.Flush(ctx)) }()

	acceptTables, err := SyntheticTables(200, netip.MustParseAddr(p.GenAddr), streamPort, 7)
	require.NoError(t, err)
	dropTables, err := SyntheticTables(200, netip.MustParseAddr(p.GenAddr), streamPort, 7)
	require.NoError(t, err)
	last := &dropTables.Ingress.Entries[len(dropTables.Ingress.Entries)-2]
	last.Action, last.Rule.Action = model.Drop, model.Drop

	for _, fw := range []Firewall{IptablesLegacy, IptablesNft, Nftables, NftablesWithSet, SgsimTC} {
		t.Run(string(fw), func(t *testing.T) {
			require.NoError(t, p.Flush(ctx))
			_, err := p.Load(ctx, fw, acceptTables)
			require.NoError(t, err)
			res, err := p.StreamUDP(ctx, 200*time.Millisecond, 64, streamPort)
			require.NoError(t, err)
			assert.Greater(t, res.Received, uint64(0), "ACCEPT rule: the stream must pass")

			_, err = p.Load(ctx, fw, dropTables)
			require.NoError(t, err)
			res, err = p.StreamUDP(ctx, 200*time.Millisecond, 64, streamPort)
			require.NoError(t, err)
			assert.Greater(t, res.Sent, uint64(0))
			assert.Zero(t, res.Received, "DROP rule: nothing may pass")
		})
	}
}

// BenchmarkPeerUDP measures delivered packets/s and CPU per packet of a 64-byte UDP stream through each
// peer at 100, 1k and 10k rules, plus the time to load the whole table. Run as root:
//
//	go test -run '^$' -bench PeerUDP -benchtime 1x ./bench/peers/
func BenchmarkPeerUDP(b *testing.B) {
	needNetns(b, "iptables-legacy-restore", "nft")
	ctx := context.Background()
	p, err := NewPath(ctx)
	require.NoError(b, err)
	defer p.Close()
	for _, n := range []int{100, 1000, 10000} {
		tables, err := SyntheticTables(n, netip.MustParseAddr(p.GenAddr), streamPort, 42)
		require.NoError(b, err)
		for _, fw := range []Firewall{None, IptablesLegacy, IptablesNft, Nftables, NftablesWithSet, SgsimTC} {
			b.Run(fmt.Sprintf("%s/rules=%d", fw, n), func(b *testing.B) {
				require.NoError(b, p.Flush(ctx))
				var load time.Duration
				var res Result
				for i := 0; i < b.N; i++ {
					load, err = p.Load(ctx, fw, tables)
					require.NoError(b, err)
					res, err = p.StreamUDP(ctx, time.Second, 64, streamPort)
					require.NoError(b, err)
				}
				b.ReportMetric(res.PPS(), "pkt/s")
				b.ReportMetric(float64(res.CPUPerPacket().Nanoseconds()), "cpu-ns/pkt")
				b.ReportMetric(float64(load.Microseconds())/1000, "load-ms")
				b.ReportMetric(float64(res.Sent-res.Received)/float64(max(res.Sent, 1)), "loss")
			})
		}
	}
}
