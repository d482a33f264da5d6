package bpf

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"
)

// The IPv4 conntrack table's geometry and state bits (sg.h, sg.c's ct4_sets).
const (
	ct4Sets     = int(sgSgConstSG_CT4SETS)
	ct4Ways     = int(sgSgConstSG_CT4WAYS)
	ct4Capacity = ct4Sets * ct4Ways // flows ct4_sets holds
	ct4SetSize  = int(unsafe.Sizeof(sgCt4Set{}))
	ct4ValsOff  = int(unsafe.Offsetof(sgCt4Set{}.V)) // a set's values follow its keys
	ct4KeySize  = int(unsafe.Sizeof(sgCtKey4{}))
	ct4ValSize  = int(unsafe.Sizeof(sgCtVal{}))
	ct4Busy     = uint64(sgSgConstSG_CT4BUSY) << 24
	ct4Lock     = uint64(sgSgConstSG_CT4LOCK) << 24
	ct4Live     = uint64(sgSgConstSG_CT4LIVE) << 24
	ct4Count    = uint64(0xff&^(sgSgConstSG_CT4BUSY|sgSgConstSG_CT4LOCK|sgSgConstSG_CT4LIVE)) << 24 // the state byte's write count in a way's first word
	ct4Write    = uint64(sgSgConstSG_CT4WRITE) << 24
	ct4State    = uint64(0xff) << 24
	ctLive      = uint8(sgSgConstSG_CT_LIVE)
	// Tries at an insert lock the program holds (it holds it for one insert), as CT4_LOCK_TRIES in sg.c.
	ct4LockTries = 64
)

// ctMap is a conntrack table as the Go side uses it: ct6 (an *ebpf.Map, an LRU hash) or ct4 (a
// *ct4Table), keyed by a key's bytes in its layout (ct_key, ct_key4) with an *sgCtVal value.
type ctMap interface {
	Lookup(key, valueOut any) error
	Put(key, value any) error
	Update(key, value any, flags ebpf.MapUpdateFlags) error
	Delete(key any) error
}

// ct4Table is the Go side of ct4_sets (sg.c), read and written through its mmap with the program's
// protocol: the same hash and candidate sets, a way claimed by a compare-and-swap of its key's first
// word and published by an atomic xor that leaves the lock bit, new keys inserted under the first set's
// lock (the lock bit of its first way), values written word by word, the live bit cleared when a way's
// last flow ends. So the Go side never rewrites a whole set, and a flow the program inserts beside a
// way Go writes is kept.
type ct4Table struct {
	sets []byte
	seed uint64
}

// openCt4 maps the program's ct4_sets.
func openCt4(sets *ebpf.Map, seed uint64) (*ct4Table, error) {
	if int(sets.ValueSize()) != ct4SetSize || int(sets.MaxEntries()) != ct4Sets {
		return nil, fmt.Errorf("ct4_sets: %d sets of %d bytes, this build's layout is %d of %d",
			sets.MaxEntries(), sets.ValueSize(), ct4Sets, ct4SetSize)
	}
	sm, err := unix.Mmap(sets.FD(), 0, ct4Sets*ct4SetSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("map ct4_sets: %w", err)
	}
	return &ct4Table{sets: sm, seed: seed}, nil
}

func (t *ct4Table) close() error {
	return unix.Munmap(t.sets)
}

// newCt4Seed returns a random non-zero seed for a new table.
func newCt4Seed() (uint64, error) {
	var b [8]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, fmt.Errorf("conntrack seed: %w", err)
		}
		if s := binary.LittleEndian.Uint64(b[:]); s != 0 {
			return s, nil
		}
	}
}

// ct4Hash is sg.c's ct4_hash.
func ct4Hash(seed, a, b uint64) uint64 {
	h := (a ^ seed) * 0xff51afd7ed558ccd
	h ^= h >> 33
	h = (h ^ b) * 0xc4ceb9fe1a85ec53
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	return h ^ h>>33
}

// candidates returns the two sets a key of words (a, b) may live in, first set first.
func (t *ct4Table) candidates(a, b uint64) [2]int {
	h := ct4Hash(t.seed, a, b)
	return [2]int{int(h & uint64(ct4Sets-1)), int(h >> 32 & uint64(ct4Sets-1))}
}

// ct4Words reads a ct_key4 as the two words ways are compared by (sg.c's ct4_words); its pad (a way's
// state byte) must be 0.
func ct4Words(key any) (a, b uint64, err error) {
	k, ok := key.([]byte)
	if !ok || len(k) != ct4KeySize || k[3] != 0 {
		return 0, 0, fmt.Errorf("ct4 key %v: want %d bytes of a ct_key4 with pad 0", key, ct4KeySize)
	}
	return binary.LittleEndian.Uint64(k), binary.LittleEndian.Uint64(k[8:]), nil
}

func ct4Value(value any) (*sgCtVal, error) {
	v, ok := value.(*sgCtVal)
	if !ok {
		return nil, fmt.Errorf("ct4 value %T: want *sgCtVal", value)
	}
	return v, nil
}

// word returns the 64-bit word at byte offset off of the table.
func (t *ct4Table) word(off int) *uint64 {
	return (*uint64)(unsafe.Pointer(&t.sets[off]))
}

// ct4Way is a way of the table: its set and its place in the set.
type ct4Way struct{ set, way int }

// key and val are the byte offsets of the way's key (its first word the way's state) and value.
func (w ct4Way) key() int { return w.set*ct4SetSize + w.way*ct4KeySize }
func (w ct4Way) val() int { return w.set*ct4SetSize + ct4ValsOff + w.way*ct4ValSize }

// state and addrs are the way's key words: the first (slot, protocol, state byte, ports), the addresses.
func (t *ct4Table) state(w ct4Way) *uint64 { return t.word(w.key()) }
func (t *ct4Table) addrs(w ct4Way) *uint64 { return t.word(w.key() + 8) }

// value reads the way's value, word by word.
func (t *ct4Table) value(w ct4Way) sgCtVal {
	var v sgCtVal
	words := (*[6]uint64)(unsafe.Pointer(&v))
	for i := range words {
		words[i] = atomic.LoadUint64(t.word(w.val() + 8*i))
	}
	return v
}

// setValue writes v into the way, word by word, as the program's in-place updates do.
func (t *ct4Table) setValue(w ct4Way, v *sgCtVal) {
	words := (*[6]uint64)(unsafe.Pointer(v))
	for i, x := range words {
		atomic.StoreUint64(t.word(w.val()+8*i), x)
	}
}

func hasFlow(v *sgCtVal) bool { return (v.Flags|v.Flags2)&ctLive != 0 }

// find returns the way holding key (a, b) and a live flow (sg.c's ct4_find over both candidate sets)
// and the first word it read there, or false. It reads only keys.
func (t *ct4Table) find(a, b uint64) (ct4Way, uint64, bool) {
	for _, set := range t.candidates(a, b) {
		for way := range ct4Ways {
			w := ct4Way{set, way}
			w0 := atomic.LoadUint64(t.state(w))
			if w0&^(ct4Count|ct4Lock) != a|ct4Live || atomic.LoadUint64(t.addrs(w)) != b {
				continue
			}
			if (atomic.LoadUint64(t.state(w))^w0)&^ct4Lock != 0 {
				continue
			}
			return w, w0, true
		}
	}
	return ct4Way{}, 0, false
}

// unlive clears the live bit of way w, whose last flow ended, if it still holds key (a, b) (sg.c's
// ct4_unlive: a way taken over meanwhile stays live). It retries while only the lock bit moves.
func (t *ct4Table) unlive(w ct4Way, a, b uint64) {
	p := t.state(w)
	for {
		w0 := atomic.LoadUint64(p)
		if w0&^(ct4Count|ct4Lock) != a|ct4Live || atomic.LoadUint64(t.addrs(w)) != b {
			return
		}
		if atomic.CompareAndSwapUint64(p, w0, w0&^ct4Live) {
			return
		}
	}
}

func (t *ct4Table) Lookup(key, valueOut any) error {
	a, b, err := ct4Words(key)
	if err != nil {
		return err
	}
	out, err := ct4Value(valueOut)
	if err != nil {
		return err
	}
	w, _, ok := t.find(a, b)
	if !ok {
		return fmt.Errorf("ct4 lookup: %w", ebpf.ErrKeyNotExist)
	}
	*out = t.value(w)
	return nil
}

func (t *ct4Table) Put(key, value any) error { return t.Update(key, value, ebpf.UpdateAny) }

// Update writes value at key: in place into the key's way (word by word; a value without a flow frees
// the way), or, for a new key, into a way claimed as the program claims one.
func (t *ct4Table) Update(key, value any, flags ebpf.MapUpdateFlags) error {
	a, b, err := ct4Words(key)
	if err != nil {
		return err
	}
	v, err := ct4Value(value)
	if err != nil {
		return err
	}
	if w, _, ok := t.find(a, b); ok {
		if flags == ebpf.UpdateNoExist {
			return fmt.Errorf("ct4 update: %w", ebpf.ErrKeyExist)
		}
		t.setInPlace(w, a, b, v)
		return nil
	}
	if flags == ebpf.UpdateExist {
		return fmt.Errorf("ct4 update: %w", ebpf.ErrKeyNotExist)
	}
	if !hasFlow(v) {
		return nil // an entry without a flow is a free way
	}
	return t.insert(a, b, v)
}

// setInPlace writes v into way w of key (a, b), and clears its live bit when v holds no flow.
func (t *ct4Table) setInPlace(w ct4Way, a, b uint64, v *sgCtVal) {
	t.setValue(w, v)
	if !hasFlow(v) {
		t.unlive(w, a, b)
	}
}

// insert is sg.c's ct4_insert for a key not found: under the first candidate set's lock it looks for
// the key again (the program may have inserted it meanwhile: then it is updated in place) and claims a
// way for it.
func (t *ct4Table) insert(a, b uint64, v *sgCtVal) error {
	sets := t.candidates(a, b)
	lock := t.state(ct4Way{sets[0], 0})
	locked := false
	for range ct4LockTries {
		w0 := atomic.LoadUint64(lock)
		if locked = w0&ct4Lock == 0 && atomic.CompareAndSwapUint64(lock, w0, w0|ct4Lock); locked {
			break
		}
		runtime.Gosched()
	}
	if locked {
		defer atomic.AndUint64(lock, ^ct4Lock)
	}
	if w, _, ok := t.find(a, b); ok {
		t.setValue(w, v)
		return nil
	}
	for range 2 {
		w, w0, ok := t.victim(sets)
		if !ok {
			break
		}
		busy, ok := t.claim(w, w0)
		if !ok {
			continue // the program took it: choose again
		}
		atomic.StoreUint64(t.addrs(w), b)
		t.setValue(w, v)
		if !t.publish(w, busy, a|busy&ct4Count|ct4Live) {
			return errors.New("ct4 insert: the way claimed was released while this writer stalled")
		}
		return nil
	}
	return errors.New("ct4 insert: every way chosen was taken by another writer")
}

// claim takes way w, whose first word was w0, for a write (sg.c's ct4_claim): busy and not live, its
// write count one more, its lock bit as it was. It returns the busy word, or false when another writer
// took the way meanwhile. A lock bit moved meanwhile (inserts of other keys take the set's lock in its
// first way) is no such change: the claim is tried again on the new word.
func (t *ct4Table) claim(w ct4Way, w0 uint64) (uint64, bool) {
	p := t.state(w)
	for {
		busy := w0&^(ct4Count|ct4Busy|ct4Live) | (w0&ct4Count+ct4Write)&ct4Count | ct4Busy
		if atomic.CompareAndSwapUint64(p, w0, busy) {
			return busy, true
		}
		cur := atomic.LoadUint64(p)
		if (cur^w0)&^ct4Lock != 0 {
			return 0, false
		}
		w0 = cur
	}
}

// publish turns the busy first word of way w into word (a key and live, or none, and the write count),
// leaving the lock bit, which another writer may have moved meanwhile. It returns false, changing
// nothing, when the way no longer holds busy: a Load in another process took this writer, stalled past
// stuckWait, for dead and released the way (releaseStuck), which an xor would have left busy for good.
func (t *ct4Table) publish(w ct4Way, busy, word uint64) bool {
	p := t.state(w)
	for {
		cur := atomic.LoadUint64(p)
		if (cur^busy)&^ct4Lock != 0 {
			return false
		}
		if atomic.CompareAndSwapUint64(p, cur, cur^(busy^word)&^ct4Lock) {
			return true
		}
	}
}

// victim chooses the way a new key takes, as sg.c's ct4_claim: a free way of the candidate set with
// fewer live ways (the first on a tie), else, both full, the way least recently seen of both; busy ways
// are not taken. It returns the way and the first word it read there.
func (t *ct4Table) victim(sets [2]int) (ct4Way, uint64, bool) {
	var live [2]int
	var words [2][ct4Ways]uint64
	for i, set := range sets {
		for w := range ct4Ways {
			words[i][w] = atomic.LoadUint64(t.state(ct4Way{set, w}))
			if words[i][w]&(ct4Live|ct4Busy) != 0 {
				live[i]++
			}
		}
	}
	full := live[0] == ct4Ways && live[1] == ct4Ways
	preferred := 0
	if live[1] < live[0] {
		preferred = 1
	}
	best := ^uint64(0)
	var pick ct4Way
	var pickW0 uint64
	ok := false
	for i, set := range sets {
		for w, w0 := range words[i] {
			if w0&ct4Busy != 0 || !full && w0&ct4Live != 0 {
				continue
			}
			rank := uint64(1)
			if i == preferred {
				rank = 0
			}
			if full {
				v := t.value(ct4Way{set, w})
				var seen uint64
				if v.Flags&ctLive != 0 {
					seen = v.Last
				}
				if v.Flags2&ctLive != 0 {
					seen = max(seen, v.Last2)
				}
				rank = 2 + seen
			}
			if rank < best {
				best, pick, pickW0, ok = rank, ct4Way{set, w}, w0, true
			}
		}
	}
	return pick, pickW0, ok
}

// Delete frees key's way: claimed as for a write, its value zeroed, published with no key.
func (t *ct4Table) Delete(key any) error {
	a, b, err := ct4Words(key)
	if err != nil {
		return err
	}
	w, w0, ok := t.find(a, b)
	if !ok {
		return fmt.Errorf("ct4 delete: %w", ebpf.ErrKeyNotExist)
	}
	busy, ok := t.claim(w, w0)
	if !ok {
		return fmt.Errorf("ct4 delete: %w", ebpf.ErrKeyNotExist) // taken over meanwhile
	}
	t.setValue(w, &sgCtVal{})
	atomic.StoreUint64(t.addrs(w), 0)
	t.publish(w, busy, busy&ct4Count) // false: released meanwhile, which frees it too
	return nil
}

// stuckWait is how long a way must stay busy, or a set's insert lock held, with its first word
// unchanged, to be taken for a dead writer's: far longer than the program holds either (within one
// run), short enough not to slow a daemon's start.
const stuckWait = 20 * time.Millisecond

// releaseStuck frees the ways a writer claimed and never published, and clears the insert locks it
// never let go, as a Go writer killed mid-write leaves them (a daemon's kill -9 while it forgot an
// ENI's flows): for good, else, a way lost to every flow and a set whose inserts each spend their lock
// tries and insert unlocked. A way's first word seen busy or locked, then the same, count included,
// wait later, is a dead writer's: the program holds both only within a run, and a writer that took
// the way meanwhile has moved its count. Load calls it before this process writes the table. It
// returns how many ways it freed and how many locks it cleared; ctx's error, having released nothing,
// when ctx ends during the wait.
func (t *ct4Table) releaseStuck(ctx context.Context, wait time.Duration) (freed, unlocked int, err error) {
	type held struct {
		w  ct4Way
		w0 uint64
	}
	var stuck []held
	for set := range ct4Sets {
		for way := range ct4Ways {
			w := ct4Way{set, way}
			if w0 := atomic.LoadUint64(t.state(w)); w0&(ct4Busy|ct4Lock) != 0 {
				stuck = append(stuck, held{w, w0})
			}
		}
	}
	if len(stuck) == 0 {
		return 0, 0, nil
	}
	select {
	case <-ctx.Done():
		return 0, 0, fmt.Errorf("wait for the writers of %d conntrack ways: %w", len(stuck), ctx.Err())
	case <-time.After(wait):
	}
	for _, h := range stuck {
		released := h.w0 &^ ct4Lock
		if h.w0&ct4Busy != 0 {
			// Free, not live, its count moved on as a write's publish moves it.
			released = (h.w0&ct4Count + ct4Write) & ct4Count
		}
		if !atomic.CompareAndSwapUint64(t.state(h.w), h.w0, released) {
			continue // written meanwhile: a live writer's
		}
		if h.w0&ct4Busy != 0 {
			freed++
		}
		if h.w0&ct4Lock != 0 {
			unlocked++
		}
	}
	return freed, unlocked, nil
}

// ct4Entry is one way in use: its key, value and place (set, way).
type ct4Entry struct {
	key      []byte
	val      sgCtVal
	set, way int
}

// entries reads every live way (a way a writer holds or takes while it is read is left out, as the
// program's lookups leave it).
func (t *ct4Table) entries() []ct4Entry {
	var out []ct4Entry
	for set := range ct4Sets {
		for way := range ct4Ways {
			w := ct4Way{set, way}
			w0 := atomic.LoadUint64(t.state(w))
			if w0&(ct4Busy|ct4Live) != ct4Live {
				continue
			}
			w1 := atomic.LoadUint64(t.addrs(w))
			v := t.value(w)
			if atomic.LoadUint64(t.state(w))&^ct4Lock != w0&^ct4Lock {
				continue
			}
			key := make([]byte, ct4KeySize)
			binary.LittleEndian.PutUint64(key, w0&^ct4State)
			binary.LittleEndian.PutUint64(key[8:], w1)
			out = append(out, ct4Entry{key: key, val: v, set: set, way: way})
		}
	}
	return out
}

// ct4WaysPin is where Load moves a pinned ct4_sets of the layout before this one (each way its key and
// its value side by side), so that this build pins a table of its own and adopts the old one's flows.
const ct4WaysPin = "ct4_sets_ways"

// The layouts of ct4_sets (sg.h's SG_CT4_LAYOUT): this build's, and that of the pins of builds before
// ct4_layout, a way's key and value side by side.
const (
	ct4Layout     = uint32(sgSgConstSG_CT4LAYOUT)
	ct4WaysLayout = 1
)

// setAsideCt4Ways moves a pinned ct4_sets of the ways layout to ct4WaysPin. Both layouts have the same
// map type, sizes and flags, so the loader would take the old table for this build's; the pinned
// ct4_layout beside it says which it is (none: the ways). A table of another layout is refused.
// Reading a map's BTF would need CAP_SYS_ADMIN, which a daemon with CAP_BPF alone lacks.
func setAsideCt4Ways(pinPath string) error {
	path := filepath.Join(pinPath, sgMapCt4Sets)
	if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	layout, err := pinnedCt4Layout(pinPath)
	if err != nil {
		return err
	}
	switch layout {
	case ct4Layout:
		return nil
	case ct4WaysLayout:
		aside := filepath.Join(pinPath, ct4WaysPin)
		if _, err := os.Stat(aside); err == nil {
			// A Load before this one set the older table aside and stopped before this build's
			// table had its ct4_layout: ct4_sets is that Load's, which no program ran, and the flows
			// are still aside, to be adopted now.
			if err := os.Remove(path); err != nil {
				return fmt.Errorf("remove the %s of an upgrade that stopped halfway: %w", path, err)
			}
			return nil
		}
		// Never over a table set aside: its flows would be lost.
		if err := unix.Renameat2(unix.AT_FDCWD, path, unix.AT_FDCWD, aside, unix.RENAME_NOREPLACE); err != nil {
			return fmt.Errorf("set aside the pinned %s of an older layout: %w", path, err)
		}
		return nil
	}
	return fmt.Errorf("the pinned %s has layout %d, this build's is %d; to upgrade, remove it and %s beside it (its IPv4 flows are forgotten)",
		path, layout, ct4Layout, sgMapCt4Layout)
}

// pinnedCt4Layout reads the layout of the ct4_sets pinned under pinPath from the ct4_layout pinned
// beside it.
func pinnedCt4Layout(pinPath string) (uint32, error) {
	path := filepath.Join(pinPath, sgMapCt4Layout)
	m, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return ct4WaysLayout, nil
	}
	if err != nil {
		return 0, fmt.Errorf("open the pinned %s: %w", path, err)
	}
	defer m.Close()
	var layout uint32
	if err := m.Lookup(uint32(0), &layout); err != nil {
		return 0, fmt.Errorf("read the pinned %s: %w", path, err)
	}
	return layout, nil
}

// adoptCt4Ways moves the flows of a ct4_sets of the ways layout set aside by Load into this build's
// table (hashed again: the placement of both follows the same seed, kept in ct4_meta) and unpins it.
func (d *Dataplane) adoptCt4Ways() error {
	path := d.pinFile(ct4WaysPin)
	old, err := ebpf.LoadPinnedMap(path, nil)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("adopt the flows pinned at %s: %w", path, err)
	}
	err = d.copyCt4Ways(old)
	old.Close()
	if err != nil {
		return fmt.Errorf("adopt the flows pinned at %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("unpin %s: %w", path, err)
	}
	return nil
}

// copyCt4Ways copies every way of old (the ways layout: a way is a ct_key4, its state byte in the pad,
// and a ct_val) that holds a flow and no writer into this build's table.
func (d *Dataplane) copyCt4Ways(old *ebpf.Map) error {
	const waySize = ct4KeySize + ct4ValSize
	if int(old.ValueSize()) != ct4Ways*waySize || int(old.MaxEntries()) != ct4Sets {
		return fmt.Errorf("%d sets of %d bytes, the ways layout had %d of %d", old.MaxEntries(), old.ValueSize(),
			ct4Sets, ct4Ways*waySize)
	}
	sm, err := unix.Mmap(old.FD(), 0, ct4Sets*ct4Ways*waySize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("map it: %w", err)
	}
	defer unix.Munmap(sm)
	for off := 0; off < len(sm); off += waySize {
		// As entries reads: the first word, the rest, the first word again. The older program may
		// still run on real traffic and take a way over meanwhile; a way it took is not copied.
		first := (*uint64)(unsafe.Pointer(&sm[off]))
		w0 := atomic.LoadUint64(first)
		if w0&ct4Busy != 0 { // the same bit in both layouts
			continue
		}
		var v sgCtVal
		copy(unsafe.Slice((*byte)(unsafe.Pointer(&v)), ct4ValSize), sm[off+ct4KeySize:off+waySize])
		key := bytes.Clone(sm[off : off+ct4KeySize])
		if !hasFlow(&v) || (atomic.LoadUint64(first)^w0)&^ct4Lock != 0 {
			continue
		}
		binary.LittleEndian.PutUint64(key, w0&^ct4State)
		if err := d.ct4.Update(key, &v, ebpf.UpdateNoExist); err != nil && !errors.Is(err, ebpf.ErrKeyExist) {
			return err
		}
	}
	return nil
}
