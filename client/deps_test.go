package client_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestClientNeedsNoServer: the client package depends on no sgsim package at all, the server's
// least of all (its tests use the server to check against).
func TestClientNeedsNoServer(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	require.NoError(t, err)
	for _, dep := range strings.Fields(string(out)) {
		if strings.HasPrefix(dep, "github.com/sgsim/sgsim/") {
			assert.Equal(t, "github.com/sgsim/sgsim/client", dep)
		}
	}
}
