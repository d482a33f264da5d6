//go:build !race

package api

const raceDetector = 1.0
