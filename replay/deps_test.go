package replay_test

import (
	"os/exec"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestReplayIsBelowTheWritePath: replay decodes, decides and compares; tables come from its caller,
// so it depends on none of the packages that assemble or change state (issue 13).
func TestReplayIsBelowTheWritePath(t *testing.T) {
	out, err := exec.Command("go", "list", "-deps", ".").Output()
	require.NoError(t, err)
	deps := strings.Fields(string(out))
	for _, p := range []string{"node", "api", "control", "store", "client", "scenario"} {
		assert.NotContains(t, deps, "github.com/sgsim/sgsim/"+p)
	}
}
