//go:build race

package server

// raceEnabled: the race detector slows the code under test about tenfold.
const raceEnabled = true
