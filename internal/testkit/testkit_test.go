package testkit

import (
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestSharedDataPath: the path is taken from the module root, whatever the package's depth.
func TestSharedDataPath(t *testing.T) {
	path, err := sharedDataPath("pcaps", "x.pcap")
	require.NoError(t, err)
	require.Equal(t, filepath.Join("..", "..", "..", "shared", "data", "pcaps", "x.pcap"), path)
}
