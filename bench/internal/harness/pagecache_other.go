//go:build !linux

package harness

// evictFromPageCache does nothing where there is no fadvise.
func evictFromPageCache(string) error { return nil }
