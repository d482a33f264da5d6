package replay

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/gopacket/gopacket/pcapgo"
)

// maxSnaplen is what readers accept whatever a file's header claims: writers that do not truncate to
// their own snaplen are common, and tcpdump and Wireshark read such files too.
const maxSnaplen = 256 << 10

// The pcap file header's and a record header's sizes.
const (
	pcapFileHeader   = 24
	pcapRecordHeader = 16
)

// Source reads the frames of one pcap or pcapng file, each with its own link type.
type Source struct {
	name string
	f    *os.File
	pcap *pcapgo.Reader
	ng   *pcapgo.NgReader
	n    int
	// size is the file's size and whole the bytes its file header and records so far take (0 for a
	// gzipped pcap, which the reader unpacks): the pcap reader says io.EOF also when a record's header
	// is there and none of its data, a truncated capture, which whole < size tells from its end.
	size, whole int64
}

// Open opens a pcap or pcapng file (told apart by magic number).
func Open(path string) (*Source, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open capture: %w", err)
	}
	br := bufio.NewReaderSize(f, 1<<20)
	s := &Source{name: path, f: f}
	magic, err := br.Peek(4)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: not a pcap or pcapng file: too short (%w)", path, err)
	}
	if magic[0] == 0x0a && magic[1] == 0x0d && magic[2] == 0x0d && magic[3] == 0x0a {
		s.ng, err = pcapgo.NewNgReader(br, pcapgo.NgReaderOptions{WantMixedLinkType: true})
	} else {
		s.pcap, err = pcapgo.NewReader(br)
		if fi, serr := f.Stat(); serr == nil && !(magic[0] == 0x1f && magic[1] == 0x8b) {
			s.size, s.whole = fi.Size(), pcapFileHeader
		}
		if err == nil && s.pcap.Snaplen() < maxSnaplen {
			s.pcap.SetSnaplen(maxSnaplen)
		}
	}
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("%s: not a readable pcap or pcapng file: %w", path, err)
	}
	return s, nil
}

// Name returns the file name.
func (s *Source) Name() string { return s.name }

// Close closes the file.
func (s *Source) Close() error { return s.f.Close() }

// Next returns the next frame, its timestamp and link type. The frame is valid until the next call.
// It returns io.EOF at the end; any other error names the file and the packet index.
func (s *Source) Next() (frame []byte, ts time.Duration, link int, err error) {
	if s.pcap != nil {
		data, ci, err := s.pcap.ZeroCopyReadPacketData()
		if errors.Is(err, io.EOF) && s.whole < s.size {
			err = fmt.Errorf("%d bytes after the last whole record: %w", s.size-s.whole, io.ErrUnexpectedEOF)
		}
		if err != nil {
			return nil, 0, 0, s.wrap(err)
		}
		if s.size > 0 {
			s.whole += pcapRecordHeader + int64(ci.CaptureLength)
		}
		s.n++
		return data, time.Duration(ci.Timestamp.UnixNano()), int(s.pcap.LinkType()), nil
	}
	data, ci, err := s.ng.ZeroCopyReadPacketData()
	if err != nil {
		return nil, 0, 0, s.wrap(err)
	}
	s.n++
	// Asked per packet, not cached: a later section may renumber interfaces.
	intf, err := s.ng.Interface(ci.InterfaceIndex)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("%s: packet %d: %w", s.name, s.n-1, err)
	}
	return data, time.Duration(ci.Timestamp.UnixNano()), int(intf.LinkType), nil
}

func (s *Source) wrap(err error) error {
	if errors.Is(err, io.EOF) {
		return io.EOF
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("%s: packet %d: file ends inside the packet (truncated capture): %w", s.name, s.n, err)
	}
	return fmt.Errorf("%s: packet %d: corrupt capture: %w", s.name, s.n, err)
}

// offset is how far into the file reading has got (read ahead included), 0 when unknown.
func (s *Source) offset() int64 {
	pos, err := s.f.Seek(0, io.SeekCurrent)
	if err != nil {
		return 0
	}
	return pos
}
