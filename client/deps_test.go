package client_test

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sgsim/sgsim/internal/testkit"
)

// TestClientNeedsNoServer: the client package depends on no sgsim package at all, the server's
// least of all (its tests use the server to check against).
func TestClientNeedsNoServer(t *testing.T) {
	for _, dep := range testkit.Deps(t) {
		if strings.HasPrefix(dep, "github.com/sgsim/sgsim/") {
			assert.Equal(t, "github.com/sgsim/sgsim/client", dep)
		}
	}
}
