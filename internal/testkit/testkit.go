// Package testkit holds what the tests of several packages need alike: where the shared data sets
// lie beside the repository, temporary files and captures, and what a package may depend on. It
// imports no sgsim package, so any package's tests can use it.
package testkit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// SharedData is the path of rel below ../shared/data (beside the repository root), relative to the
// running test's directory. When it is absent the test is skipped, or fails under CI=true, where the
// shared data is required.
func SharedData(tb testing.TB, rel ...string) string {
	tb.Helper()
	path, err := sharedDataPath(rel...)
	if err == nil {
		_, err = os.Stat(path)
	}
	if err != nil {
		if os.Getenv("CI") == "true" {
			tb.Fatalf("shared data missing under CI: %v", err)
		}
		tb.Skipf("shared data absent: %v", err)
	}
	return path
}

// sharedDataPath finds the module root above the working directory and names rel below
// ../shared/data from it, relative to the working directory.
func sharedDataPath(rel ...string) (string, error) {
	wd, err := os.Getwd()
	if err != nil {
		return "", err
	}
	root := wd
	for {
		if _, err := os.Stat(filepath.Join(root, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(root)
		if parent == root {
			return "", os.ErrNotExist
		}
		root = parent
	}
	return filepath.Rel(wd, filepath.Join(append([]string{root, "..", "shared", "data"}, rel...)...))
}

// SharedPcaps lists the captures (.pcap, .pcapng, .cap) below ../shared/data/pcaps, skipping the test
// (failing it under CI=true) when they are absent; a directory that cannot be read fails the test.
func SharedPcaps(tb testing.TB) []string {
	tb.Helper()
	var out []string
	err := filepath.WalkDir(SharedData(tb, "pcaps"), func(p string, de os.DirEntry, err error) error {
		if err == nil && !de.IsDir() && (strings.HasSuffix(p, ".pcap") || strings.HasSuffix(p, ".pcapng") || strings.HasSuffix(p, ".cap")) {
			out = append(out, p)
		}
		return err
	})
	if err != nil {
		tb.Fatalf("list the shared captures: %v", err)
	}
	return out
}

// Deps lists the packages the package in the working directory depends on, itself included
// (go list -deps).
func Deps(tb testing.TB) []string {
	tb.Helper()
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	if err != nil {
		tb.Fatalf("go list -deps: %v", err)
	}
	return strings.Fields(string(out))
}

// WriteFile writes content to a file called name in a directory of the test's own (removed when it
// ends) and returns its path.
func WriteFile(tb testing.TB, name, content string) string {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), name)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		tb.Fatalf("write %s: %v", path, err)
	}
	return path
}
