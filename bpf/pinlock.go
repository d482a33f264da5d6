package bpf

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrPinPathInUse is returned by Load when another dataplane (in practice another process's) holds the
// pin path.
var ErrPinPathInUse = errors.New("pin path in use")

// pinLock is a pin directory's exclusive flock, held from Load to Close. The pinned maps assume one
// writing process: two daemons on one pin path would race each other's conntrack claims (a stalled
// writer's stores landing in a way the other took), table swaps and slot assignment. The kernel drops
// the lock when its holder dies, kill -9 included, so a restart never finds a stale one.
type pinLock struct{ fd int }

// lockPinPath takes dir's lock, or says which process holds it.
func lockPinPath(dir string) (*pinLock, error) {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open pin directory %s: %w", dir, err)
	}
	if err := unix.Flock(fd, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		holder := flockHolder(fd)
		_ = unix.Close(fd)
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, fmt.Errorf("%w: %s is held by %s; one process writes a pin path at a time: stop it, or give "+
				"this one another --pin-path", ErrPinPathInUse, dir, holder)
		}
		return nil, fmt.Errorf("lock pin directory %s: %w", dir, err)
	}
	return &pinLock{fd: fd}, nil
}

// release lets the pin path go; nil-safe, for a dataplane loaded without one.
func (l *pinLock) release() error {
	if l == nil || l.fd < 0 {
		return nil
	}
	err := unix.Close(l.fd)
	l.fd = -1
	if err != nil {
		return fmt.Errorf("release the pin path's lock: %w", err)
	}
	return nil
}

// flockHolder names the process holding a flock on fd's inode, from /proc/locks ("process 1234"), or
// "another process" when it cannot tell (a holder in another pid namespace; /proc/locks hidden, as the
// systemd unit's ProcSubset=pid does).
func flockHolder(fd int) string {
	const unknown = "another process"
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return unknown
	}
	// /proc/locks: "1: FLOCK  ADVISORY  WRITE 1234 00:1c:5678 0 EOF", the device in hex.
	id := fmt.Sprintf("%02x:%02x:%d", unix.Major(st.Dev), unix.Minor(st.Dev), st.Ino)
	f, err := os.Open("/proc/locks")
	if err != nil {
		return unknown
	}
	defer f.Close()
	for sc := bufio.NewScanner(f); sc.Scan(); {
		fields := strings.Fields(sc.Text())
		// A holder in another pid namespace shows as pid 0.
		if len(fields) >= 6 && fields[1] == "FLOCK" && fields[5] == id && fields[4] != "0" {
			return "process " + fields[4]
		}
	}
	return unknown
}
