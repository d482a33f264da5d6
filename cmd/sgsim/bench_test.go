package main

import (
	"bytes"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/testkit"
)

func runBenchCmd(t *testing.T, args ...string) (string, error) {
	t.Helper()
	root := newRootCmd()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append([]string{"bench"}, args...))
	err := root.Execute()
	return out.String(), err
}

func TestBenchCmd(t *testing.T) {
	out, err := runBenchCmd(t, "--synthetic", "300", "--packets", "400", "--sgs", "3")
	require.NoError(t, err)
	assert.Contains(t, out, "fast ns")
	assert.Contains(t, out, "bytes/rule")
	assert.Contains(t, out, "synth_300")

	f := testkit.WriteFile(t, "rules", "@10.0.0.0/8 0.0.0.0/0 0 : 65535 80 : 80 0x06/0xFF\n@10.1.0.0/16 0.0.0.0/0 0 : 65535 0 : 65535 0x11/0xFF\n")
	out, err = runBenchCmd(t, "--classbench", f, "--packets", "100")
	require.NoError(t, err)
	// The file's row: its name, its two rules, the packets asked for, no allocation per lookup and no
	// packet on which the classifier and the reference disagree.
	lines := strings.Split(strings.TrimSpace(out), "\n")
	require.Len(t, lines, 2, out)
	row := strings.Fields(lines[1])
	require.Len(t, row, 12, lines[1])
	assert.Equal(t, []string{filepath.Base(f), "2", "100"}, row[:3])
	assert.Equal(t, []string{"0.00", "0"}, row[10:], "allocs per lookup, disagreements")
}

func TestBenchCmdErrors(t *testing.T) {
	_, err := runBenchCmd(t)
	require.ErrorContains(t, err, "--classbench FILE or --synthetic N")

	f := testkit.WriteFile(t, "bad", "@10.0.0.0/8 0.0.0.0/0 0 : 65535 80 : 80 0x06/0xFF\n@10.0.0.0/33 0.0.0.0/0 0 : 65535 80 : 80 0x06/0xFF\n")
	_, err = runBenchCmd(t, "--classbench", f)
	require.ErrorContains(t, err, f+":2: source prefix")

	_, err = runBenchCmd(t, "--synthetic", "10", "--packets", "0")
	require.ErrorContains(t, err, "--packets 0")
}
