package store

// Checks made before bbolt touches a file. bbolt trusts its file: an empty one is initialised as a new
// database (so a seed silently replaces every acknowledged change), a zeroed or torn meta page makes it
// fall back to the other meta page (an older transaction, served as if current), and a bad freelist or
// page id panics or faults on the mmap. CheckFile reads the file with pread, never mmap, and refuses
// anything bbolt would misread, so a daemon stops with one line instead of serving the wrong state.

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// ErrCorrupt is wrapped by CheckFile's error for a file that is not an intact bbolt database.
var ErrCorrupt = errors.New("store file is not an intact bbolt database")

// ErrLocked is wrapped by CheckFile's error when another process holds the file.
var ErrLocked = errors.New("store file is locked by another process")

// recoverHint is how an operator gets a daemon back without losing acknowledged changes unknowingly.
const recoverHint = "restore it from a backup, or move it aside and start with --topology to seed a new store (every change made through the API since that seed is then lost)"

// CorruptError says which file is unusable and why; its text is the one line `sgsim serve` prints.
type CorruptError struct {
	Path    string
	Problem string
}

func (e *CorruptError) Error() string {
	return fmt.Sprintf("store: %s: %s; nothing was changed: %s", e.Path, e.Problem, recoverHint)
}

// Unwrap lets callers test for ErrCorrupt.
func (e *CorruptError) Unwrap() error { return ErrCorrupt }

// lockedError is CheckFile's error for a file another process holds.
type lockedError struct{ path string }

func (e *lockedError) Error() string {
	return fmt.Sprintf("store: %s is locked by another process (is a sgsim serve running on this data dir?)", e.path)
}

func (e *lockedError) Unwrap() error { return ErrLocked }

// bbolt's on-disk layout (go.etcd.io/bbolt/internal/common, file format version 2, little-endian on
// every platform this runs on). A page starts with a 16-byte header: id u64, flags u16, count u16,
// overflow u32. A meta page's body: magic u32, version u32, pageSize u32, flags u32, root bucket
// {root pgid u64, sequence u64}, freelist pgid u64, high-water pgid u64, txid u64, checksum u64 (FNV-64a
// of the 56 bytes before it). TestCheckFileReadsBboltLayout holds this against a real bbolt file.
const (
	pageHeaderSize  = 16
	metaSize        = 64
	metaSumOffset   = 56
	boltMagic       = 0xED0CDAED
	boltVersion     = 2
	flagBranch      = 0x01
	flagLeaf        = 0x02
	flagMeta        = 0x04
	flagFreelist    = 0x10
	elementSize     = 16 // branch and leaf page elements are both 16 bytes
	bucketLeafFlag  = 0x01
	inBucketSize    = 16
	noFreelist      = ^uint64(0)
	minPageSize     = 1 << 10
	maxPageSize     = 1 << 24
	maxTreeDepth    = 64 // a B+tree of 2^64 pages is far shallower; deeper means a cycle
	freelistBigFlag = 0xFFFF
)

// boltMeta is a decoded meta page.
type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	hwm      uint64 // high-water mark: pages [0, hwm) are in use
	txid     uint64
}

// decodeMeta decodes the meta page at the start of b and reports what is wrong with it, if anything.
func decodeMeta(b []byte) (boltMeta, string) {
	if len(b) < pageHeaderSize+metaSize {
		return boltMeta{}, "too short to hold a meta page"
	}
	if flags := binary.LittleEndian.Uint16(b[8:]); flags != flagMeta {
		if isZero(b[:pageHeaderSize+metaSize]) {
			return boltMeta{}, "zeroed"
		}
		return boltMeta{}, fmt.Sprintf("not a meta page (page flags %#x)", flags)
	}
	m := b[pageHeaderSize : pageHeaderSize+metaSize]
	le := binary.LittleEndian
	if magic := le.Uint32(m[0:]); magic != boltMagic {
		return boltMeta{}, fmt.Sprintf("wrong magic %#x (want bbolt's %#x)", magic, boltMagic)
	}
	if v := le.Uint32(m[4:]); v != boltVersion {
		return boltMeta{}, fmt.Sprintf("bbolt file format version %d (this build reads %d)", v, boltVersion)
	}
	h := fnv.New64a()
	h.Write(m[:metaSumOffset])
	if sum := le.Uint64(m[metaSumOffset:]); sum != h.Sum64() {
		return boltMeta{}, fmt.Sprintf("checksum mismatch (stored %016x, computed %016x)", sum, h.Sum64())
	}
	meta := boltMeta{pageSize: le.Uint32(m[8:]), root: le.Uint64(m[16:]), freelist: le.Uint64(m[32:]),
		hwm: le.Uint64(m[40:]), txid: le.Uint64(m[48:])}
	if ps := meta.pageSize; ps < minPageSize || ps > maxPageSize || ps&(ps-1) != 0 {
		return boltMeta{}, fmt.Sprintf("impossible page size %d", ps)
	}
	return meta, ""
}

func isZero(b []byte) bool {
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// fileCheck is what CheckFile learnt about an intact file.
type fileCheck struct {
	txid      uint64 // the transaction bbolt will open at
	committed bool   // the file exists and a transaction after bbolt's initialisation wrote to it
}

// CheckFile tells whether path, if it exists, is an intact bbolt database that no other process holds:
// both meta pages valid and agreeing on the page size, the file a whole number of pages holding every
// page in use, the freelist and every page of the bucket tree where the meta page says, with sane
// headers. A file that does not exist passes (bbolt creates it). Its error is one line naming the file,
// what is wrong and how to recover; it wraps ErrCorrupt or ErrLocked. It only reads the file.
func CheckFile(path string) error {
	_, err := checkFile(path)
	return err
}

func checkFile(path string) (fileCheck, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return fileCheck{}, nil
	}
	if err != nil {
		return fileCheck{}, fmt.Errorf("store: open %s: %w", path, err)
	}
	defer f.Close()
	// A shared lock conflicts only with a writer's exclusive one (bbolt's), so two checks never collide;
	// it is released with the file, before bbolt takes its own.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return fileCheck{}, &lockedError{path: path}
		}
		return fileCheck{}, fmt.Errorf("store: lock %s: %w", path, err)
	}
	info, err := f.Stat()
	if err != nil {
		return fileCheck{}, fmt.Errorf("store: stat %s: %w", path, err)
	}
	c := checker{f: f, path: path, size: info.Size()}
	return c.check()
}

type checker struct {
	f    *os.File
	path string
	size int64
	meta boltMeta
	seen map[uint64]bool
}

func (c *checker) corrupt(format string, args ...any) error {
	return &CorruptError{Path: c.path, Problem: fmt.Sprintf(format, args...)}
}

func (c *checker) check() (fileCheck, error) {
	if c.size == 0 {
		return fileCheck{}, c.corrupt("the file is empty (0 bytes), so it holds no state; bbolt would initialise it as a new database and a seed would replace what was acknowledged")
	}
	head := make([]byte, pageHeaderSize+metaSize)
	if _, err := c.f.ReadAt(head, 0); err != nil {
		return fileCheck{}, c.corrupt("truncated to %d bytes, shorter than a bbolt meta page", c.size)
	}
	m0, bad0 := decodeMeta(head)
	// Meta page 1 sits one page in; page 0 normally says how long a page is, otherwise try every size
	// bbolt could have used, as bbolt does, and describe it at the OS page size.
	var m1 boltMeta
	bad1 := fmt.Sprintf("missing: the file ends at %d bytes", c.size)
	if bad0 == "" {
		m1, bad1 = c.metaAt(int64(m0.pageSize), head)
	} else {
		for ps := int64(minPageSize); ps <= maxPageSize && ps+int64(len(head)) <= c.size; ps <<= 1 {
			m, bad := c.metaAt(ps, head)
			if bad == "" {
				m1, bad1 = m, ""
				break
			}
			if ps == int64(os.Getpagesize()) {
				bad1 = bad
			}
		}
	}
	switch {
	case bad0 != "" && bad1 != "":
		if isZeroFile(c.f, c.size) {
			return fileCheck{}, c.corrupt("all %d bytes are zero, no bbolt meta page", c.size)
		}
		return fileCheck{}, c.corrupt("not a bbolt database: meta page 0 %s, meta page 1 %s", bad0, bad1)
	case bad0 != "":
		return fileCheck{}, c.corrupt("meta page 0 is invalid (%s) while meta page 1 holds transaction %d; bbolt would silently serve that older transaction", bad0, m1.txid)
	case bad1 != "":
		return fileCheck{}, c.corrupt("meta page 1 is invalid (%s) while meta page 0 holds transaction %d; bbolt would silently serve that older transaction if page 0 is the stale one", bad1, m0.txid)
	case m0.pageSize != m1.pageSize:
		return fileCheck{}, c.corrupt("the meta pages disagree on the page size (%d and %d)", m0.pageSize, m1.pageSize)
	}
	c.meta = m0
	if m1.txid > m0.txid {
		c.meta = m1
	}
	if err := c.checkPages(); err != nil {
		return fileCheck{}, err
	}
	return fileCheck{txid: c.meta.txid, committed: c.meta.txid > 1}, nil
}

// metaAt decodes the meta page at offset off (head is scratch space).
func (c *checker) metaAt(off int64, head []byte) (boltMeta, string) {
	if off+int64(len(head)) > c.size {
		return boltMeta{}, fmt.Sprintf("missing: the file ends at %d bytes", c.size)
	}
	if _, err := c.f.ReadAt(head, off); err != nil {
		return boltMeta{}, fmt.Sprintf("unreadable: %v", err)
	}
	return decodeMeta(head)
}

// checkPages checks the in-use pages the chosen meta page points to.
func (c *checker) checkPages() error {
	ps := int64(c.meta.pageSize)
	if c.size%ps != 0 {
		return c.corrupt("its size %d is not a whole number of %d-byte pages (truncated?)", c.size, ps)
	}
	if need := int64(c.meta.hwm) * ps; c.meta.hwm < 4 || need > c.size || need/ps != int64(c.meta.hwm) {
		return c.corrupt("truncated: transaction %d uses %d pages (%d bytes) but the file has %d bytes",
			c.meta.txid, c.meta.hwm, int64(c.meta.hwm)*ps, c.size)
	}
	c.seen = map[uint64]bool{0: true, 1: true}
	if err := c.checkTree(c.meta.root, "the root bucket", 0, true); err != nil {
		return err
	}
	if c.meta.freelist == noFreelist {
		return nil
	}
	return c.checkFreelist()
}

// page reads page id with its overflow pages after checking its header names it and has flags want.
func (c *checker) page(id uint64, want uint16, what string) ([]byte, error) {
	if id < 2 || id >= c.meta.hwm {
		return nil, c.corrupt("%s points at page %d, outside the %d pages in use", what, id, c.meta.hwm)
	}
	if c.seen[id] {
		return nil, c.corrupt("%s points at page %d, which is already in use elsewhere", what, id)
	}
	c.seen[id] = true
	ps := int64(c.meta.pageSize)
	hdr := make([]byte, pageHeaderSize)
	if _, err := c.f.ReadAt(hdr, int64(id)*ps); err != nil {
		return nil, c.corrupt("cannot read page %d (%s): %v", id, what, err)
	}
	le := binary.LittleEndian
	if got := le.Uint64(hdr); got != id {
		return nil, c.corrupt("page %d (%s) calls itself page %d", id, what, got)
	}
	if flags := le.Uint16(hdr[8:]); flags&want == 0 || flags&(flags-1) != 0 {
		return nil, c.corrupt("page %d (%s) has page flags %#x", id, what, flags)
	}
	overflow := uint64(le.Uint32(hdr[12:]))
	if id+overflow >= c.meta.hwm {
		return nil, c.corrupt("page %d (%s) runs %d pages past the %d pages in use", id, what, overflow, c.meta.hwm)
	}
	for o := uint64(1); o <= overflow; o++ {
		c.seen[id+o] = true
	}
	buf := make([]byte, int64(overflow+1)*ps)
	if _, err := c.f.ReadAt(buf, int64(id)*ps); err != nil {
		return nil, c.corrupt("cannot read page %d (%s): %v", id, what, err)
	}
	return buf, nil
}

func (c *checker) checkFreelist() error {
	p, err := c.page(c.meta.freelist, flagFreelist, "the freelist")
	if err != nil {
		return err
	}
	le := binary.LittleEndian
	n, at := uint64(le.Uint16(p[10:])), pageHeaderSize
	if n == freelistBigFlag {
		n, at = le.Uint64(p[pageHeaderSize:]), pageHeaderSize+8
	}
	if n > uint64(len(p)-at)/8 {
		return c.corrupt("the freelist (page %d) claims %d free pages, more than it can hold", c.meta.freelist, n)
	}
	listed := make(map[uint64]bool, n)
	for i := range n {
		id := le.Uint64(p[at+int(i)*8:])
		switch {
		case id < 2 || id >= c.meta.hwm:
			return c.corrupt("the freelist (page %d) lists page %d, outside the %d pages in use", c.meta.freelist, id, c.meta.hwm)
		case c.seen[id] || listed[id]:
			// bbolt would hand out a page that is still in use, and overwrite live data with the next commit.
			return c.corrupt("the freelist (page %d) lists page %d, which is in use", c.meta.freelist, id)
		}
		listed[id] = true
	}
	return nil
}

// checkTree checks the B+tree rooted at page id and every bucket below it; root says it is the root
// bucket's, which holds only buckets.
func (c *checker) checkTree(id uint64, what string, depth int, root bool) error {
	if depth > maxTreeDepth {
		return c.corrupt("%s is nested deeper than %d levels (a cycle)", what, maxTreeDepth)
	}
	p, err := c.page(id, flagBranch|flagLeaf, what)
	if err != nil {
		return err
	}
	return c.checkNode(p, id, what, depth, root)
}

// checkNode checks the elements of a branch or leaf page p (an inline bucket's page has id 0).
func (c *checker) checkNode(p []byte, id uint64, what string, depth int, root bool) error {
	le := binary.LittleEndian
	flags, n := le.Uint16(p[8:]), int(le.Uint16(p[10:]))
	if pageHeaderSize+n*elementSize > len(p) {
		return c.corrupt("page %d (%s) claims %d elements, more than it can hold", id, what, n)
	}
	// bbolt finds keys by binary search: keys out of order hide entries (a bucket not found is no state).
	var prev []byte
	ordered := func(i int, key []byte) error {
		if i > 0 && bytes.Compare(prev, key) >= 0 {
			return c.corrupt("page %d (%s) element %d is out of key order", id, what, i)
		}
		prev = key
		return nil
	}
	for i := range n {
		e := p[pageHeaderSize+i*elementSize:]
		at := pageHeaderSize + i*elementSize
		if flags == flagBranch {
			pos, ksize, child := int(le.Uint32(e)), int(le.Uint32(e[4:])), le.Uint64(e[8:])
			if at+pos+ksize > len(p) {
				return c.corrupt("page %d (%s) element %d runs past its page", id, what, i)
			}
			if err := ordered(i, p[at+pos:at+pos+ksize]); err != nil {
				return err
			}
			if err := c.checkTree(child, what, depth+1, root); err != nil {
				return err
			}
			continue
		}
		if flags != flagLeaf {
			return c.corrupt("page %d (%s) has page flags %#x", id, what, flags)
		}
		eflags, pos, ksize, vsize := le.Uint32(e), int(le.Uint32(e[4:])), int(le.Uint32(e[8:])), int(le.Uint32(e[12:]))
		if at+pos+ksize+vsize > len(p) {
			return c.corrupt("page %d (%s) element %d runs past its page", id, what, i)
		}
		if err := ordered(i, p[at+pos:at+pos+ksize]); err != nil {
			return err
		}
		if eflags&bucketLeafFlag == 0 {
			if root {
				return c.corrupt("page %d (%s) element %d is a value, not a bucket", id, what, i)
			}
			continue
		}
		key, val := p[at+pos:at+pos+ksize], p[at+pos+ksize:at+pos+ksize+vsize]
		name := fmt.Sprintf("bucket %q", key)
		if len(val) < inBucketSize {
			return c.corrupt("page %d: %s has a %d-byte header", id, name, len(val))
		}
		if rootPage := le.Uint64(val); rootPage != 0 {
			if err := c.checkTree(rootPage, name, depth+1, false); err != nil {
				return err
			}
			continue
		}
		inline := val[inBucketSize:]
		if len(inline) < pageHeaderSize {
			return c.corrupt("page %d: inline %s is shorter than a page header", id, name)
		}
		if f := le.Uint16(inline[8:]); f != flagLeaf {
			return c.corrupt("page %d: inline %s has page flags %#x", id, name, f)
		}
		if err := c.checkNode(inline, 0, name, depth+1, false); err != nil {
			return err
		}
	}
	return nil
}

// isZeroFile tells whether the first megabyte of f is all zeros (a wiped file, told apart from garbage).
func isZeroFile(f *os.File, size int64) bool {
	buf := make([]byte, min(size, 1<<20))
	if _, err := f.ReadAt(buf, 0); err != nil && !errors.Is(err, io.EOF) {
		return false
	}
	return isZero(buf)
}

// SeedDecision is the seeding policy of `sgsim serve`: a topology seeds only a data directory with no
// database file, or one bbolt initialised but never committed to (a first start that stopped before its
// seed commit). An existing file that is not intact stops the start with CheckFile's error, never a
// seed; a missing file without a topology is an error too. Otherwise the file's state is served and the
// topology ignored.
func SeedDecision(dataDir string, haveTopology bool) (seed bool, err error) {
	path := filepath.Join(dataDir, DBFile)
	fc, err := checkFile(path)
	switch {
	case err != nil:
		return false, err
	case fc.committed:
		return false, nil
	case !haveTopology:
		return false, fmt.Errorf("store: %s holds no state yet: give --topology to seed it on first start", path)
	}
	return true, nil
}
