// Package netns runs code inside a Linux network namespace: the daemon attaches to host interfaces that
// live in another namespace, and tests open sockets inside their "VM" namespaces.
package netns

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// Path is the file of a namespace given by ip-netns(8) name, or nameOrPath itself when it holds a slash.
func Path(nameOrPath string) string {
	if strings.Contains(nameOrPath, "/") {
		return nameOrPath
	}
	return filepath.Join("/var/run/netns", nameOrPath)
}

// Do runs fn on a fresh OS thread switched into the namespace nameOrPath (see Path). The thread is never
// switched back: it exits with its goroutine, so nothing else ever runs in the namespace by accident.
// Sockets fn opens stay in the namespace and may be used from any goroutine.
func Do[T any](nameOrPath string, fn func() (T, error)) (T, error) {
	type result struct {
		v   T
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: see above
		var zero T
		f, err := os.Open(Path(nameOrPath))
		if err != nil {
			ch <- result{zero, fmt.Errorf("network namespace %s: %w", nameOrPath, err)}
			return
		}
		defer f.Close()
		if err := unix.Setns(int(f.Fd()), unix.CLONE_NEWNET); err != nil {
			ch <- result{zero, fmt.Errorf("enter network namespace %s: %w", nameOrPath, err)}
			return
		}
		v, err := fn()
		ch <- result{v, err}
	}()
	r := <-ch
	return r.v, r.err
}

// Here opens the network namespace of the calling OS thread, so work handed to other goroutines can
// run in it too (Do with HerePath): a goroutine runs on any thread, in whatever namespace that thread
// is. The caller closes the file.
func Here() (*os.File, error) {
	f, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return nil, fmt.Errorf("open this thread's network namespace: %w", err)
	}
	return f, nil
}

// HerePath is the path Do takes for a namespace file Here opened.
func HerePath(f *os.File) string { return fmt.Sprintf("/proc/self/fd/%d", f.Fd()) }
