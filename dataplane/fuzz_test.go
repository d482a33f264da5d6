package dataplane_test

import (
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// FuzzNewPacket: NewPacket accepts exactly a remote IPv4 or IPv6 address without a zone, a protocol
// name (any case) or number 0-255, and a port only for tcp or udp and only in 0-65535. A refusal names
// the first field at fault, in that order, with its value as given. What is accepted is that packet
// (an IPv4-mapped address read as IPv4), and its canonical fields build the same packet again.
func FuzzNewPacket(f *testing.F) {
	for _, s := range []struct {
		protocol, remote string
		port             int
		hasPort          bool
	}{
		{"tcp", "198.18.0.1", 80, true}, {"UDP", "2001:db8::1", 53, true}, {"icmp", "198.18.0.1", 0, false},
		{"icmpv6", "::ffff:198.18.0.1", 0, false}, {"6", "10.0.0.1", 65535, true}, {"017", "10.0.0.1", 0, true},
		{"255", "10.0.0.1", 0, false}, {"256", "10.0.0.1", 0, false}, {"-1", "10.0.0.1", 0, false}, {"+6", "10.0.0.1", 0, false},
		{"gre", "10.0.0.1", 0, false}, {"icmp", "10.0.0.1", 5, true}, {"tcp", "10.0.0.1", 65536, true}, {"tcp", "10.0.0.1", -1, true},
		{"tcp", "1.2.3.300", 80, true}, {"tcp", "fe80::1%eth0", 80, true}, {"tcp", "", 0, false}, {"", "10.0.0.1", 0, false},
		{"tcp", " 10.0.0.1", 0, false}, {"tcp", "10.0.0.1/32", 0, false},
	} {
		f.Add(s.protocol, s.remote, s.port, s.hasPort)
	}
	f.Fuzz(func(t *testing.T, protocol, remote string, port int, hasPort bool) {
		var portp *int
		if hasPort {
			portp = &port
		}
		p, err := dataplane.NewPacket(protocol, remote, portp)
		addr, addrErr := netip.ParseAddr(remote)
		proto, protoOK := protocolOf(protocol)
		switch {
		case addrErr != nil || addr.Zone() != "":
			require.EqualError(t, err, fmt.Sprintf("remote %q: not an IPv4 or IPv6 address", remote))
			return
		case !protoOK:
			require.Error(t, err)
			require.True(t, strings.HasPrefix(err.Error(), fmt.Sprintf("protocol: %q: ", protocol)), err.Error())
			return
		case hasPort && proto != model.IPProtoTCP && proto != model.IPProtoUDP:
			require.EqualError(t, err, fmt.Sprintf("port %d: ports exist only for tcp and udp", port))
			return
		case hasPort && (port < 0 || port > 65535):
			require.EqualError(t, err, fmt.Sprintf("port %d: out of range 0-65535", port))
			return
		}
		require.NoError(t, err)
		require.Equal(t, addr, p.Remote, "a v4-mapped address stays IPv6, as on the wire")
		require.Equal(t, proto, p.Proto)
		require.Equal(t, hasPort, p.HasPort)
		if hasPort {
			require.Equal(t, port, int(p.Port))
		} else {
			require.Zero(t, p.Port)
		}
		again, err := dataplane.NewPacket(model.IPProtocolName(p.Proto), p.Remote.String(), portp)
		require.NoError(t, err)
		require.Equal(t, p, again)
	})
}

// protocolOf reads a protocol as NewPacket documents it: tcp, udp, icmp or icmpv6 in any case, or a
// number 0-255.
func protocolOf(s string) (uint8, bool) {
	if n, ok := map[string]uint8{"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58}[strings.ToLower(s)]; ok {
		return n, true
	}
	n, err := strconv.ParseUint(s, 10, 8)
	return uint8(n), err == nil
}
