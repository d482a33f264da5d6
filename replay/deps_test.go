package replay_test

import (
	"testing"

	"github.com/stretchr/testify/assert"

	"github.com/sgsim/sgsim/internal/testkit"
)

// TestReplayIsBelowTheWritePath: replay decodes, decides and compares; tables come from its caller,
// so it depends on none of the packages that assemble or change state (issue 13).
func TestReplayIsBelowTheWritePath(t *testing.T) {
	deps := testkit.Deps(t)
	for _, p := range []string{"node", "api", "control", "store", "client", "scenario"} {
		assert.NotContains(t, deps, "github.com/sgsim/sgsim/"+p)
	}
}
