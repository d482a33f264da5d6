//go:build race

package api

// raceDetector: the race detector multiplies the cost of everything a flood does, so the latency
// bounds of TestUnsignedFloodBounded are scaled by this factor under it.
const raceDetector = 3.0
