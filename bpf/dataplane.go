package bpf

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"sync"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"

	"github.com/sgsim/sgsim/compiler"
	"github.com/sgsim/sgsim/dataplane"
	"github.com/sgsim/sgsim/model"
)

// DefaultPinPath is where a daemon pins maps and links so a restart replaces the program without an
// unprotected window.
const DefaultPinPath = "/sys/fs/bpf/sgsim"

// maxSlots is the number of ENIs one loaded program can hold (ifaces/eni_names size; tables is 2×).
const maxSlots = uint32(sgSgConstSG_MAX_SLOTS)

// spareMinChunks is the size from which a replaced table map is kept as its direction's spare: below it a
// fresh map costs little to fill, and a spare would only double the memory.
const spareMinChunks = uint32(64 << 10 / chunkSize)

// Options configures Load.
type Options struct {
	// PinPath pins the maps (and links made by Attach) there, reusing ones already pinned. Empty: nothing
	// is pinned and everything goes away on Close.
	PinPath string
	// Clsact attaches with a clsact qdisc and a direct-action cls_bpf filter (through netlink) even where
	// the kernel has TCX, for hosts whose tooling manages TC filters; kernels without TCX get this
	// anyway. It needs a PinPath: the program is pinned so tc(8) users see what runs.
	Clsact bool
}

// Dataplane is the loaded TC program with its maps. Safe for concurrent use.
type Dataplane struct {
	objs    sgObjects
	pinPath string
	pinLock *pinLock // held while this process writes pinPath's maps
	clsact  bool
	hz      uint32 // the kernel's tick rate: conntrack's clock counts ticks
	ct4     *ct4Table

	scratch scratch
	// staging is held from Stage until its Switch or Discard: a change is staged against the live
	// tables (unchanged directions are skipped, spares are taken), so only one may be pending.
	staging sync.Mutex

	mu    sync.Mutex // serialises writers (Publish, Attach); packets never wait for it
	slots map[string]uint32
	live  map[uint32]liveTables // slot → the tables this process published there last
	links map[string]link.Link  // "<ifindex>-<hook>" → link made or adopted by Attach
	// resident holds free slots whose emptied inner maps stay in the outer map: a new ENI in such a
	// slot is written into them in place (no interface is bound to a free slot, so no packet reads
	// them), which spares the publish the synchronize_rcu of a map-in-map update. At most
	// maxResident slots are kept, so deleted ENIs' memory is bounded.
	resident map[uint32][2]*ebpf.Map
	earlier  []int // EarlierInterfaces: the ifindexes Load found bound or with pinned links
}

// maxResident bounds the free slots whose inner maps stay installed (see Dataplane.resident).
const maxResident = 64

// collectionSpec returns the program's spec, pinned (sg.c declares which maps, LIBBPF_PIN_BY_NAME) only
// when pinned is set, for a kernel ticking hz times a second (conntrack's clock).
func collectionSpec(pinned bool, hz uint32) (*ebpf.CollectionSpec, error) {
	spec, err := loadSg()
	if err != nil {
		return nil, fmt.Errorf("load bpf spec: %w", err)
	}
	v := spec.Variables[sgVarCtHz]
	if v == nil {
		return nil, fmt.Errorf("load bpf spec: no variable %s", sgVarCtHz)
	}
	if err := v.Set(hz); err != nil {
		return nil, fmt.Errorf("load bpf spec: set %s: %w", sgVarCtHz, err)
	}
	if m := spec.Maps["tables"]; m == nil || m.InnerMap == nil || m.InnerMap.ValueSize != uint32(chunkSize) {
		return nil, fmt.Errorf("load bpf spec: the tables map's chunks are not the %d bytes layout.go writes", chunkSize)
	}
	// Written as the map is made, so that a ct4_layout pinned beside ct4_sets always says its layout.
	spec.Maps[sgMapCt4Layout].Contents = []ebpf.MapKV{{Key: uint32(0), Value: ct4Layout}}
	if !pinned {
		for _, m := range spec.Maps {
			m.Pinning = ebpf.PinNone
		}
	}
	return spec, nil
}

// Load loads the program and its maps into the kernel. With a pin path it holds the path's lock until
// Close: a second process's Load of the same path fails with ErrPinPathInUse, changing nothing. ctx
// ends only the wait for writers a pinned conntrack table may hold (releaseStuck); the verification of
// the programs, one bpf() call each, runs to its end.
func Load(ctx context.Context, opts Options) (*Dataplane, error) {
	var lock *pinLock
	if opts.PinPath != "" {
		if err := ensureBPFFS(opts.PinPath); err != nil {
			return nil, err
		}
		var err error
		if lock, err = lockPinPath(opts.PinPath); err != nil {
			return nil, fmt.Errorf("load bpf program: %w", err)
		}
	}
	d, err := load(ctx, opts)
	if err != nil {
		return nil, errors.Join(err, lock.release())
	}
	d.pinLock = lock
	return d, nil
}

// load is Load once the pin path (if any) is this process's.
func load(ctx context.Context, opts Options) (*Dataplane, error) {
	hz, err := kernelHZ()
	if err != nil {
		return nil, fmt.Errorf("load bpf program: the kernel's tick rate: %w", err)
	}
	spec, err := collectionSpec(opts.PinPath != "", hz)
	if err != nil {
		return nil, err
	}
	var co ebpf.CollectionOptions
	if opts.PinPath != "" {
		co.Maps.PinPath = opts.PinPath
		if err := setAsideCt4Ways(opts.PinPath); err != nil {
			return nil, fmt.Errorf("load bpf program: %w", err)
		}
	}
	seed, err := ct4SeedFor(opts.PinPath)
	if err != nil {
		return nil, fmt.Errorf("load bpf program: %w", err)
	}
	if err := spec.Variables[sgVarCt4Seed].Set(seed); err != nil {
		return nil, fmt.Errorf("load bpf program: set %s: %w", sgVarCt4Seed, err)
	}
	if opts.Clsact && opts.PinPath == "" {
		return nil, errors.New("load bpf program: the clsact attachment needs a pin path")
	}
	d := &Dataplane{pinPath: opts.PinPath, clsact: opts.Clsact, hz: hz, slots: map[string]uint32{}, live: map[uint32]liveTables{},
		resident: map[uint32][2]*ebpf.Map{}}
	if err := loadObjects(spec, &co, &d.objs); err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("load bpf program: the maps pinned under %s were made by an sgsim build with another "+
				"layout (%w); to upgrade, remove %s (its interfaces stay unfiltered until this daemon attaches) and start again",
				opts.PinPath, err, opts.PinPath)
		}
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return nil, fmt.Errorf("load bpf program: %w (verifier log tail: %s)", err, tail(ve.Log, 20))
		}
		return nil, fmt.Errorf("load bpf program: %w", err)
	}
	if err := d.objs.Ct4Meta.Put(uint32(0), seed); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load bpf program: keep the conntrack seed: %w", err)
	}
	if d.ct4, err = openCt4(d.objs.Ct4Sets, seed); err != nil {
		d.objs.Close()
		return nil, fmt.Errorf("load bpf program: %w", err)
	}
	if opts.PinPath != "" {
		if err := d.checkTableChunks(); err != nil {
			d.closeObjs()
			return nil, fmt.Errorf("load bpf program: the maps pinned under %s were made by an sgsim build with another "+
				"layout (%w); to upgrade, remove %s (its interfaces stay unfiltered until this daemon attaches) and start again",
				opts.PinPath, err, opts.PinPath)
		}
		freed, unlocked, err := d.ct4.releaseStuck(ctx, stuckWait)
		if err != nil {
			d.closeObjs()
			return nil, fmt.Errorf("load bpf program: %w", err)
		}
		if freed+unlocked > 0 {
			slog.Warn("freed IPv4 conntrack ways an earlier writer left mid-write", "pin", opts.PinPath,
				"ways", freed, "locks", unlocked)
		}
		if err := d.adoptOldConntrack(); err != nil {
			d.closeObjs()
			return nil, fmt.Errorf("load bpf program: %w", err)
		}
	}
	if err := d.recoverSlots(); err != nil {
		d.closeObjs()
		return nil, err
	}
	if err := d.syncIfslots(); err != nil {
		d.closeObjs()
		return nil, fmt.Errorf("load bpf program: %w", err)
	}
	if d.earlier, err = d.earlierInterfaces(); err != nil {
		d.closeObjs()
		return nil, fmt.Errorf("load bpf program: %w", err)
	}
	return d, nil
}

// loadObjects loads spec's maps into objs, then its two programs side by side, one goroutine each: a
// program's verification is one bpf() call that runs on the calling thread's CPU, and the two one
// after the other were most of a replay's wall time. The programs take the maps loaded first (map
// replacements), so both run on the same maps; each has its own copy of the frozen constants (.rodata)
// and of .bss, which holds only the BTF anchors at the end of sg.c, which no program reads.
func loadObjects(spec *ebpf.CollectionSpec, co *ebpf.CollectionOptions, objs *sgObjects) error {
	if err := spec.LoadAndAssign(&objs.sgMaps, co); err != nil {
		return err
	}
	pco := *co
	pco.MapReplacements = map[string]*ebpf.Map{}
	maps := reflect.ValueOf(&objs.sgMaps).Elem()
	for i := range maps.NumField() {
		pco.MapReplacements[maps.Type().Field(i).Tag.Get("ebpf")] = maps.Field(i).Interface().(*ebpf.Map)
	}
	var egress struct {
		P *ebpf.Program `ebpf:"sg_host_egress"`
	}
	var ingress struct {
		P *ebpf.Program `ebpf:"sg_host_ingress"`
	}
	var wg sync.WaitGroup
	var egressErr, ingressErr error
	wg.Go(func() { egressErr = spec.LoadAndAssign(&egress, &pco) })
	wg.Go(func() { ingressErr = spec.LoadAndAssign(&ingress, &pco) })
	wg.Wait()
	objs.SgHostEgress, objs.SgHostIngress = egress.P, ingress.P
	if err := errors.Join(egressErr, ingressErr); err != nil {
		objs.Close()
		return err
	}
	return nil
}

// checkTableChunks tells whether the (pinned) tables map takes inner maps of this build's chunk size,
// which cilium/ebpf's compatibility check of pinned maps does not look at: it puts a probe map into a
// free entry, which the kernel refuses when the outer map's template differs, and takes it out again.
func (d *Dataplane) checkTableChunks() error {
	free := -1
	for ti := range 2 * maxSlots {
		// The raw value (the inner map's ID): opening the inner map by ID would need CAP_SYS_ADMIN,
		// which the daemon runs without (deploy/sgsim.service).
		var id uint32
		err := d.objs.Tables.Lookup(ti, &id)
		if errors.Is(err, ebpf.ErrKeyNotExist) {
			free = int(ti)
			break
		}
		if err != nil {
			return fmt.Errorf("read tables[%d]: %w", ti, err)
		}
	}
	if free < 0 {
		return nil // every entry holds a table this program was verified against
	}
	probe, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(chunkSize), MaxEntries: 1,
		Flags: unix.BPF_F_INNER_MAP})
	if err != nil {
		return fmt.Errorf("create probe table: %w", err)
	}
	defer probe.Close()
	if err := d.objs.Tables.Put(uint32(free), probe); err != nil {
		return fmt.Errorf("tables holds chunks of another size than %d bytes (%v): %w", chunkSize, err, ebpf.ErrMapIncompatible)
	}
	if err := d.objs.Tables.Delete(uint32(free)); err != nil {
		return fmt.Errorf("remove probe table: %w", err)
	}
	return nil
}

func tail(lines []string, n int) []string {
	if len(lines) > n {
		return lines[len(lines)-n:]
	}
	return lines
}

// ensureBPFFS creates dir on a bpffs, mounting one at /sys/fs/bpf when none is there.
func ensureBPFFS(dir string) error {
	var st unix.Statfs_t
	if err := unix.Statfs("/sys/fs/bpf", &st); err != nil || st.Type != unix.BPF_FS_MAGIC {
		if err := os.MkdirAll("/sys/fs/bpf", 0o700); err != nil {
			return fmt.Errorf("create /sys/fs/bpf: %w", err)
		}
		if err := unix.Mount("bpf", "/sys/fs/bpf", "bpf", 0, "mode=700"); err != nil {
			return fmt.Errorf("mount bpffs on /sys/fs/bpf: %w", err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	return nil
}

// recoverSlots reads the ENI slot assignment back from pinned eni_names after a restart.
func (d *Dataplane) recoverSlots() error {
	names, err := arrayValues[sgEniname](d.objs.EniNames, int(maxSlots))
	if err != nil {
		return fmt.Errorf("read eni_names: %w", err)
	}
	for slot, name := range names {
		if s := cString(name.Name[:]); s != "" {
			d.slots[s] = uint32(slot)
		}
	}
	return nil
}

// TableGeneration returns the generation of eni's newest table in force (either direction), and
// whether it has any.
func (d *Dataplane) TableGeneration(eni string) (uint64, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	slot, ok := d.slots[eni]
	if !ok {
		return 0, false
	}
	l, ok := d.live[slot]
	if !ok || (l.maps[0] == nil && l.maps[1] == nil) {
		return 0, false
	}
	return max(l.gens[0], l.gens[1]), true
}

// ENIs lists the ENIs that hold a slot: those this process published and those an earlier process
// left pinned (recoverSlots), which a state that no longer has them must remove.
func (d *Dataplane) ENIs() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	return slices.Sorted(maps.Keys(d.slots))
}

func cString(b []int8) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// Close releases the program, links and maps held by this process. Unpinned links detach; pinned
// links and maps stay in the kernel and keep enforcing until a new process adopts them.
func (d *Dataplane) Close() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	var errs []error
	for _, l := range d.links {
		errs = append(errs, l.Close())
	}
	d.links = nil
	for _, l := range d.live {
		l.close()
	}
	d.live = map[uint32]liveTables{}
	for _, ms := range d.resident {
		liveTables{maps: ms}.close()
	}
	d.resident = map[uint32][2]*ebpf.Map{}
	errs = append(errs, d.closeObjs(), d.pinLock.release())
	return errors.Join(errs...)
}

// closeObjs unmaps the conntrack table and closes the program and its maps.
func (d *Dataplane) closeObjs() error {
	var err error
	if d.ct4 != nil {
		err = d.ct4.close()
		d.ct4 = nil
	}
	return errors.Join(err, d.objs.Close())
}

// ct4SeedFor returns the seed of the IPv4 conntrack table pinned under pinPath (kept in ct4_meta: the
// flows' places depend on it), or a new one when there is none.
func ct4SeedFor(pinPath string) (uint64, error) {
	if pinPath != "" {
		m, err := ebpf.LoadPinnedMap(filepath.Join(pinPath, sgMapCt4Meta), nil)
		if err == nil {
			var seed uint64
			err = m.Lookup(uint32(0), &seed)
			m.Close()
			if err != nil {
				return 0, fmt.Errorf("read the pinned conntrack seed: %w", err)
			}
			if seed != 0 {
				return seed, nil
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("open the pinned conntrack seed: %w", err)
		}
	}
	return newCt4Seed()
}

// slotFor returns eni's slot, assigning a free one. Caller holds mu.
func (d *Dataplane) slotFor(eni string) (uint32, error) {
	if s, ok := d.slots[eni]; ok {
		return s, nil
	}
	var n sgEniname
	if len(eni) > len(n.Name) { // a name of the whole field has no NUL: cString stops at its end
		return 0, fmt.Errorf("network interface ID %q: longer than %d bytes", eni, len(n.Name))
	}
	used := make(map[uint32]bool, len(d.slots))
	for _, s := range d.slots {
		used[s] = true
	}
	free, found := uint32(0), false
	for s := range d.resident { // a free slot whose maps are installed publishes without a grace period
		if !used[s] && (!found || s < free) {
			free, found = s, true
		}
	}
	for s := uint32(0); !found && s < maxSlots; s++ {
		free, found = s, !used[s]
	}
	if !found {
		return 0, fmt.Errorf("network interface %s: all %d slots in use", eni, maxSlots)
	}
	for i := range len(eni) {
		n.Name[i] = int8(eni[i])
	}
	if err := d.objs.EniNames.Put(free, &n); err != nil {
		return 0, fmt.Errorf("record slot of %s: %w", eni, err)
	}
	d.slots[eni] = free
	return free, nil
}

// tableMap returns an inner map of at least chunks chunks holding buf: spare when it is big enough
// (refilling a map is far cheaper than the first write into a fresh one, whose pages the kernel only
// then faults in), else a fresh map, in which case spare is closed.
func tableMap(t *compiler.Table, buf []byte, spare *ebpf.Map) (*ebpf.Map, error) {
	n := uint32(len(buf) / chunkSize)
	m := spare
	// A spare more than twice the size needed is replaced, so a slot does not keep its biggest table's
	// memory for ever.
	if m == nil || m.MaxEntries() < n || m.MaxEntries() > 2*n {
		if spare != nil {
			spare.Close()
		}
		var err error
		m, err = ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: uint32(chunkSize), MaxEntries: n,
			Flags: unix.BPF_F_INNER_MAP}) // the outer map's template has it: inner maps may differ in size
		if err != nil {
			return nil, fmt.Errorf("create table map for %s/%s (%d chunks): %w", t.ENI, t.Direction, n, err)
		}
	}
	for i := range n {
		if err := m.Put(i, buf[int(i)*chunkSize:int(i+1)*chunkSize]); err != nil {
			m.Close()
			return nil, fmt.Errorf("fill table map for %s/%s: %w", t.ENI, t.Direction, err)
		}
	}
	return m, nil
}

// Publish loads the tables of changed ENIs (keyed by ENI ID) at generation gen and removes the ENIs in
// removed: Stage, then Switch.
func (d *Dataplane) Publish(ctx context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) error {
	st, err := d.Stage(ctx, gen, changed, removed)
	if err != nil {
		return err
	}
	return st.Switch()
}

// Stage builds the tables of changed ENIs (keyed by ENI ID) at generation gen in inner maps beside the
// live ones; packets keep seeing the live tables until Switch. One change is pending at a time: a
// further Stage waits until this one is switched or discarded, so the caller must do one of them.
func (d *Dataplane) Stage(ctx context.Context, gen uint64, changed map[string]*compiler.Tables, removed []string) (dataplane.Staged, error) {
	d.staging.Lock()
	st := &staged{d: d, gen: gen, removed: removed}
	// ENIs with the same SG list share their compiled entries (control compiles each list once); their
	// table bytes are the same, so each is serialised once.
	type rowsKey struct {
		entries *compiler.Entry
		n       int
		noSG    bool
	}
	bytesOf := map[rowsKey][]byte{}
	defer func() { d.scratch.put(slices.Collect(maps.Values(bytesOf))) }()
	serialiseOnce := func(t *compiler.Table) ([]byte, error) {
		k := rowsKey{unsafe.SliceData(t.Entries), len(t.Entries), t.NoSG}
		if b, ok := bytesOf[k]; ok {
			return b, nil
		}
		b, err := serialise(t, gen, d.scratch.get())
		if err == nil {
			bytesOf[k] = b
		}
		return b, err
	}
	for id, ts := range changed {
		if err := ctx.Err(); err != nil {
			st.Discard()
			return nil, fmt.Errorf("publish generation %d: %w", gen, err)
		}
		d.mu.Lock()
		_, had := d.slots[id]
		slot, err := d.slotFor(id)
		d.mu.Unlock()
		if err != nil {
			st.Discard()
			return nil, fmt.Errorf("publish generation %d: %w", gen, err)
		}
		if !had {
			st.assigned = append(st.assigned, id)
		}
		s := stagedSlot{slot: slot, tables: ts}
		d.mu.Lock()
		live := d.live[slot]
		d.mu.Unlock()
		for dir, t := range []*compiler.Table{ts.Ingress, ts.Egress} {
			if sameKernelTable(live.tables[dir], t) {
				continue // the kernel's table stays, and with it its generation, flows and counters
			}
			buf, err := serialiseOnce(t)
			if err == nil {
				spare, installed := d.takeSpare(slot, dir), false
				if spare == nil {
					spare, installed = d.takeResident(slot, dir)
				}
				s.maps[dir], err = tableMap(t, buf, spare)
				s.inPlace[dir] = installed && s.maps[dir] == spare
			}
			if err != nil {
				st.slots = append(st.slots, s)
				st.Discard()
				return nil, fmt.Errorf("publish generation %d: %w", gen, err)
			}
		}
		st.slots = append(st.slots, s)
	}
	return st, nil
}

// scratch keeps serialisation buffers from one Stage to the next. A table's bytes only live until they
// are copied into its map, but a fresh buffer's pages are faulted in on first touch, and the kernel's
// copy then faults in the ones serialise never wrote, a cost that grows with the table.
type scratch struct {
	mu   sync.Mutex
	free [][]byte
}

// maxScratch bounds the buffers kept: a Stage needs one per distinct table, nearly always one or two.
const maxScratch = 4

func (s *scratch) get() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	if n := len(s.free); n > 0 {
		b := s.free[n-1]
		s.free = s.free[:n-1]
		return b
	}
	return nil
}

// put keeps the biggest of bufs and the buffers already kept, up to maxScratch.
func (s *scratch) put(bufs [][]byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.free = append(s.free, bufs...)
	slices.SortFunc(s.free, func(a, b []byte) int { return cap(b) - cap(a) })
	clear(s.free[min(len(s.free), maxScratch):])
	s.free = s.free[:min(len(s.free), maxScratch)]
}

// takeResident hands over free slot's installed inner map for direction dir (installed true), or nil.
func (d *Dataplane) takeResident(slot uint32, dir int) (m *ebpf.Map, installed bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	ms, ok := d.resident[slot]
	if !ok || ms[dir] == nil {
		return nil, false
	}
	m, ms[dir] = ms[dir], nil
	if ms[0] == nil && ms[1] == nil {
		delete(d.resident, slot)
	} else {
		d.resident[slot] = ms
	}
	return m, true
}

// takeSpare hands over slot's spare inner map for direction dir, or nil.
func (d *Dataplane) takeSpare(slot uint32, dir int) *ebpf.Map {
	d.mu.Lock()
	defer d.mu.Unlock()
	l, ok := d.live[slot]
	m := l.spare[dir]
	if ok && m != nil {
		l.spare[dir] = nil
		d.live[slot] = l
	}
	return m
}

// staged is one Stage's inner maps, not yet in force.
type staged struct {
	d       *Dataplane
	gen     uint64
	slots   []stagedSlot
	removed []string
	// assigned are the ENIs this change gave a slot (none before it): a Discard gives the slots back,
	// or a change that failed to commit would hold them for good (and, pinned, after a restart).
	assigned []string
	done     bool // switched or discarded: the staging lock is released
}

type stagedSlot struct {
	slot   uint32
	maps   [2]*ebpf.Map // ingress, egress; nil where the kernel's table stays
	tables *compiler.Tables
	// inPlace marks maps written where they are installed already (a free slot's resident map):
	// Switch need not point the outer map at them.
	inPlace [2]bool
}

// Discard closes the staged maps (the kernel frees them), gives back the slots the change assigned
// and ends the change.
func (st *staged) Discard() {
	st.closeMaps()
	st.removed = nil
	st.releaseAssigned()
	st.finish()
}

// releaseAssigned frees the slots Stage gave ENIs that had none: no table was put in force there.
func (st *staged) releaseAssigned() {
	d := st.d
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, id := range st.assigned {
		slot, ok := d.slots[id]
		if !ok {
			continue
		}
		if err := d.objs.EniNames.Put(slot, &sgEniname{}); err != nil {
			slog.Error("give back the slot of a discarded change", "eni", id, "slot", slot, "err", err)
			continue // kept: still named in eni_names, the slot stays taken rather than shared
		}
		delete(d.slots, id)
	}
	st.assigned = nil
}

func (st *staged) closeMaps() {
	for _, s := range st.slots {
		for _, m := range s.maps {
			if m != nil {
				m.Close()
			}
		}
	}
	st.slots = nil
}

func (st *staged) finish() {
	if !st.done {
		st.done = true
		st.d.staging.Unlock()
	}
}

// switched is one ENI direction put in force by Switch.
type switched struct {
	staged int // index in staged.slots
	slot   uint32
	dir    int
	m      *ebpf.Map
}

// Switch puts every staged table in force with one batch update of the outer map: each ENI direction
// switches at once, a packet sees the old table or the new one, never a mix. The kernel returns from a
// map-in-map update only after programs that may still read a replaced inner map have finished
// (synchronize_rcu), so a replaced map is kept as the slot's spare and refilled by a later Stage.
func (st *staged) Switch() error {
	if st.done {
		return fmt.Errorf("publish generation %d: switched or discarded already", st.gen)
	}
	defer st.finish()
	defer st.closeMaps() // what did not get switched
	d := st.d
	d.mu.Lock()
	defer d.mu.Unlock()
	// In-place maps first: they are in force as soon as their generation is set, with no outer-map
	// update; the others follow once the outer map points at them.
	var todo []switched
	inPlace := 0
	for pass := range 2 {
		for i, s := range st.slots {
			for dir, m := range s.maps {
				if m != nil && s.inPlace[dir] == (pass == 0) {
					todo = append(todo, switched{i, s.slot, dir, m})
					inPlace += 1 - pass
				}
			}
		}
	}
	reused, err := d.reusedGenerations(todo, st.gen)
	if err != nil {
		return fmt.Errorf("publish generation %d: %w", st.gen, err)
	}
	gens := make([]uint64, len(todo))
	if err := d.setTableGens(todo, gens); err != nil {
		return fmt.Errorf("publish generation %d: %w", st.gen, err)
	}
	n, err := d.switchTables(todo[inPlace:])
	n += inPlace
	for i := range gens[:n] {
		gens[i] = st.gen + 1
	}
	if err := d.setTableGens(todo[:n], gens[:n]); err != nil {
		return fmt.Errorf("publish generation %d: %w", st.gen, err)
	}
	// What the kernel took is recorded even when the rest failed: the next Stage compares against it.
	for _, sw := range todo[:n] {
		l := d.live[sw.slot]
		old := l.maps[sw.dir]
		if old != nil && old.MaxEntries() >= spareMinChunks {
			if l.spare[sw.dir] != nil {
				l.spare[sw.dir].Close()
			}
			l.spare[sw.dir] = old
		} else if old != nil {
			old.Close()
		}
		staged := &st.slots[sw.staged]
		l.maps[sw.dir] = sw.m
		l.gens[sw.dir] = st.gen
		l.tables[sw.dir] = staged.tables.Get(model.Direction(sw.dir))
		d.live[sw.slot] = l
		staged.maps[sw.dir] = nil // now the live map: not closed below
	}
	if err != nil {
		return fmt.Errorf("publish generation %d: %w", st.gen, err)
	}
	if err := d.forgetFlows(reused); err != nil {
		return fmt.Errorf("publish generation %d: %w", st.gen, err)
	}
	for _, s := range st.slots {
		// Every staged map is switched now; an unchanged direction takes the new table's provenance
		// (descriptions may differ) but keeps the kernel's table and generation.
		l := d.live[s.slot]
		l.tables = [2]*compiler.Table{s.tables.Ingress, s.tables.Egress}
		d.live[s.slot] = l
	}
	return st.remove()
}

// remove frees the slots of the ENIs the change removed: their tables, names, bindings and tracked
// flows; up to maxResident slots keep their emptied maps installed for their next ENI. Caller holds mu.
func (st *staged) remove() error {
	d := st.d
	freed := map[uint32]bool{}
	for _, id := range st.removed {
		slot, ok := d.slots[id]
		if !ok {
			continue
		}
		l := d.live[slot]
		keep := len(d.resident) < maxResident && l.maps[0] != nil && l.maps[1] != nil
		for dir := range uint32(2) {
			if err := d.objs.TableGens.Put(slot*2+dir, uint64(0)); err != nil {
				return fmt.Errorf("publish generation %d: remove %s: %w", st.gen, id, err)
			}
			if keep {
				continue // its maps stay installed for the slot's next ENI
			}
			if err := d.objs.Tables.Delete(slot*2 + dir); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				return fmt.Errorf("publish generation %d: remove %s: %w", st.gen, id, err)
			}
		}
		if keep {
			d.resident[slot] = l.maps
			l.maps = [2]*ebpf.Map{}
			d.live[slot] = l
		}
		if err := d.objs.EniNames.Put(slot, &sgEniname{}); err != nil {
			return fmt.Errorf("publish generation %d: remove %s: %w", st.gen, id, err)
		}
		if err := d.forgetIfaces(slot); err != nil {
			return fmt.Errorf("publish generation %d: remove %s: %w", st.gen, id, err)
		}
		delete(d.slots, id)
		d.live[slot].close()
		delete(d.live, slot)
		freed[slot] = true
	}
	// Before a freed slot can be taken again (Stage waits for this Switch), its flows go.
	if err := d.forgetFlows(freed); err != nil {
		return fmt.Errorf("publish generation %d: %w", st.gen, err)
	}
	return nil
}

// reusedGenerations returns the slots of todo where gen does not follow the generation in force: a
// later one is there (the store behind gen started again, a new data directory or etcd, the pins
// kept), or gen itself with other rules. gen may then be the generation a tracked flow there holds for
// other rules, and conntrack would take that flow's entry (or its reply) for current. Switch forgets
// those slots' flows once the new tables are in force; packets in between are decided as before the
// switch. A table adopted from an earlier process at gen itself is taken for the same rules (the same
// store at the same generation), since its rules are not known here. Caller holds mu.
func (d *Dataplane) reusedGenerations(todo []switched, gen uint64) (map[uint32]bool, error) {
	reused := map[uint32]bool{}
	for _, sw := range todo {
		var g uint64 // the generation plus one, 0 when unknown
		if err := d.objs.TableGens.Lookup(sw.slot*2+uint32(sw.dir), &g); err != nil {
			return nil, fmt.Errorf("read table generation of slot %d: %w", sw.slot, err)
		}
		// A direction in todo whose rules are known here differs from them (Stage skips equal ones).
		known := d.live[sw.slot].tables[sw.dir] != nil
		if g != 0 && (g-1 > gen || g-1 == gen && known) {
			reused[sw.slot] = true
		}
	}
	return reused, nil
}

// setTableGens sets table_gens for the switched directions (gens: each one's generation plus one, or 0
// while its table is being replaced). Caller holds mu.
func (d *Dataplane) setTableGens(todo []switched, gens []uint64) error {
	if len(todo) == 0 {
		return nil
	}
	keys := make([]uint32, len(todo))
	for i, sw := range todo {
		keys[i] = sw.slot*2 + uint32(sw.dir)
	}
	if _, err := d.objs.TableGens.BatchUpdate(keys, gens, nil); err == nil {
		return nil
	} else if !errors.Is(err, ebpf.ErrNotSupported) {
		return fmt.Errorf("set table generations: %w", err)
	}
	for i, k := range keys {
		if err := d.objs.TableGens.Put(k, gens[i]); err != nil {
			return fmt.Errorf("set table generation %d: %w", k, err)
		}
	}
	return nil
}

// switchTables points the outer map's entries at their new inner maps, in one batch update where the
// kernel has it (older kernels lack batch updates of map-in-map), and returns how many it switched.
// Caller holds mu.
func (d *Dataplane) switchTables(todo []switched) (int, error) {
	if len(todo) == 0 {
		return 0, nil
	}
	keys := make([]uint32, len(todo))
	fds := make([]uint32, len(todo))
	for i, sw := range todo {
		keys[i], fds[i] = sw.slot*2+uint32(sw.dir), uint32(sw.m.FD())
	}
	n, err := d.objs.Tables.BatchUpdate(keys, fds, nil)
	if err == nil {
		return len(todo), nil
	}
	if !errors.Is(err, ebpf.ErrNotSupported) {
		return n, fmt.Errorf("switch tables %v: %w", keys, err)
	}
	for i, sw := range todo {
		if err := d.objs.Tables.Put(keys[i], sw.m); err != nil {
			return i, fmt.Errorf("switch table %d: %w", keys[i], err)
		}
	}
	return len(todo), nil
}

// liveTables is what one ENI slot holds: the tables (ingress, egress) last published there and the
// generation each was loaded at, so hit counters can be told by rule, and this process's handles on the slot's inner
// maps (nil for maps adopted from an earlier process).
type liveTables struct {
	gens   [2]uint64 // generation of the kernel's table, per direction
	tables [2]*compiler.Table
	maps   [2]*ebpf.Map // in force
	spare  [2]*ebpf.Map // replaced and quiesced, to be refilled
}

func (l liveTables) close() {
	for _, m := range append(l.maps[:], l.spare[:]...) {
		if m != nil {
			m.Close()
		}
	}
}

// sameKernelTable tells whether the kernel's bytes of b would be those of a, generation aside: the same
// matches, actions, SGs and rule indexes (descriptions and other provenance may differ). a may be nil.
func sameKernelTable(a, b *compiler.Table) bool {
	if a == nil || a.NoSG != b.NoSG || len(a.Entries) != len(b.Entries) {
		return false
	}
	for i := range a.Entries {
		x, y := &a.Entries[i], &b.Entries[i]
		if x.Protocol != y.Protocol || x.AnyRemote != y.AnyRemote || x.Ports != y.Ports || x.Action != y.Action ||
			x.SgID != y.SgID || x.RuleIndex != y.RuleIndex || !slices.Equal(x.Remotes, y.Remotes) {
			return false
		}
	}
	return true
}

// forgetIfaces unbinds every interface bound to slot. Caller holds mu.
func (d *Dataplane) forgetIfaces(slot uint32) error {
	var (
		k   uint32
		cfg sgIfcfg
		del []uint32
	)
	it := d.objs.Ifaces.Iterate()
	for it.Next(&k, &cfg) {
		if cfg.Slot == slot {
			del = append(del, k)
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read interface bindings: %w", err)
	}
	for _, k := range del {
		if err := d.deleteBinding(k); err != nil {
			return fmt.Errorf("unbind ifindex %d: %w", k, err)
		}
	}
	return nil
}

// Bind makes the program treat the interface ifindex as the host side of eni.
func (d *Dataplane) Bind(ifindex int, eni string) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if ifindex <= 1 {
		return fmt.Errorf("bind %s: ifindex %d is not a host interface", eni, ifindex)
	}
	slot, err := d.slotFor(eni)
	if err != nil {
		return fmt.Errorf("bind %s: %w", eni, err)
	}
	if err := d.putBinding(uint32(ifindex), slot); err != nil {
		return fmt.Errorf("bind %s to ifindex %d: %w", eni, ifindex, err)
	}
	return nil
}

// Result is the program's decision on one frame.
type Result struct {
	Accept bool
	Reason dataplane.Reason
	Entry  int // index of the deciding entry in the table, -1 when no table decided
}

// skbCtx is the prefix of struct __sk_buff that BPF_PROG_TEST_RUN lets a caller set and read back.
type skbCtx struct {
	Len, PktType, Mark, QueueMapping, Protocol, VlanPresent, VlanTCI, VlanProto uint32
	Priority, IngressIfindex, Ifindex, TCIndex                                  uint32
	Cb                                                                          [5]uint32
	_                                                                           [192 - 68]byte // rest of struct __sk_buff: the kernel writes it all back
}

// Run runs frame through the program as the ENI eni would see it in direction dir (ingress: sent to
// the ENI, the host's TC egress; egress: sent by it, the host's TC ingress), with BPF_PROG_TEST_RUN.
// Conntrack state is shared with real traffic.
func (d *Dataplane) Run(frame []byte, eni string, dir model.Direction) (Result, error) {
	d.mu.Lock()
	slot, ok := d.slots[eni]
	d.mu.Unlock()
	if !ok {
		return Result{}, fmt.Errorf("run: network interface %s has no tables loaded", eni)
	}
	prog := d.objs.SgHostEgress
	if dir == model.Egress {
		prog = d.objs.SgHostIngress
	}
	if len(frame) < 14 {
		return Result{}, fmt.Errorf("run: frame of %d bytes is shorter than an Ethernet header", len(frame))
	}
	in := skbCtx{Mark: slot + 1}
	var out skbCtx
	ret, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: in, ContextOut: &out})
	if err != nil {
		return Result{}, fmt.Errorf("run %s/%s: %w", eni, dir, err)
	}
	if out.Cb[2] != 1 {
		return Result{}, fmt.Errorf("run %s/%s: program returned %d without a decision", eni, dir, ret)
	}
	return Result{Accept: ret == 0, Reason: dataplane.Reason(out.Cb[1]), Entry: int(int32(out.Cb[0])) - 1}, nil
}

// RunRepeat runs frame repeat times (for benchmarks); it reports nothing but errors.
func (d *Dataplane) RunRepeat(frame []byte, eni string, dir model.Direction, repeat uint32) error {
	d.mu.Lock()
	slot, ok := d.slots[eni]
	d.mu.Unlock()
	if !ok {
		return fmt.Errorf("run: network interface %s has no tables loaded", eni)
	}
	prog := d.objs.SgHostEgress
	if dir == model.Egress {
		prog = d.objs.SgHostIngress
	}
	_, err := prog.Run(&ebpf.RunOptions{Data: frame, Context: skbCtx{Mark: slot + 1}, Repeat: repeat})
	if err != nil {
		return fmt.Errorf("run %s/%s: %w", eni, dir, err)
	}
	return nil
}

// FlushConntrack forgets every tracked flow and every remembered first-fragment verdict.
func (d *Dataplane) FlushConntrack() error {
	if err := d.deleteFrags(func(*sgFragKey) bool { return true }); err != nil {
		return fmt.Errorf("flush fragments: %w", err)
	}
	return d.flushFlows()
}

// pinFile returns the path of a pinned object.
func (d *Dataplane) pinFile(name string) string { return filepath.Join(d.pinPath, name) }
