package strictyaml_test

import (
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/sgsim/sgsim/internal/strictyaml"
)

type packet struct {
	Proto string `json:"proto"`
	Sport uint16 `json:"sport,omitempty"`
}

type step struct {
	Packets []packet `json:"packets"`
}

type doc struct {
	Name  string `json:"name"`
	Steps []step `json:"steps"`
}

// TestDecode: YAML and JSON decode alike; a bad key or value is named by its path, a YAML syntax
// error by its line, an empty document as such.
func TestDecode(t *testing.T) {
	for _, tc := range []struct{ name, in, err string }{
		{"yaml", "name: x\nsteps:\n  - packets: [{proto: tcp, sport: 80}]\n", ""},
		{"json", `{"name":"x","steps":[{"packets":[{"proto":"udp"}]}]}`, ""},
		{"an integer out of range", "steps:\n  - packets: [{proto: tcp}, {proto: tcp, sport: 70000}]\n",
			"steps[0].packets[1].sport: 70000 is out of range: expected an integer from 0 to 65535"},
		{"an unknown key", "steps:\n  - packet: []\n", `steps[0]: unknown field "packet"`},
		{"a key in another case", "Name: x\n", `key "Name": must be written "name"`},
		{"a list for a string", "name: [a]\n", "name: expected a string, got an array"},
		{"yaml syntax", "name: x\n  steps: [\n", "line 2"},
		{"empty", "\n", "the document is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var d doc
			err := strictyaml.Decode([]byte(tc.in), &d)
			if tc.err == "" {
				require.NoError(t, err)
				assert.NotEmpty(t, d.Steps)
				return
			}
			require.ErrorContains(t, err, tc.err)
		})
	}
}
