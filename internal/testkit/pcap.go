package testkit

import (
	"bufio"
	"os"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// WritePcap writes frames to path as a pcap of link type link (snaplen 65535, microsecond
// timestamps), frame i captured at at(i).
func WritePcap(tb testing.TB, path string, link layers.LinkType, frames [][]byte, at func(i int) time.Time) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatalf("create the capture: %v", err)
	}
	defer f.Close()
	bw := bufio.NewWriterSize(f, 1<<20)
	w := pcapgo.NewWriter(bw)
	if err := w.WriteFileHeader(65535, link); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
	for i, fr := range frames {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: at(i), CaptureLength: len(fr), Length: len(fr)}, fr); err != nil {
			tb.Fatalf("write %s: %v", path, err)
		}
	}
	if err := bw.Flush(); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
	if err := f.Close(); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
}
