package harness

import (
	"fmt"
	"os"

	"golang.org/x/sys/unix"
)

// evictFromPageCache writes back and drops the page cache's copy of the file
// at path, so that the next process to map it reads it from the disk. A
// binary the build has just written sits in the page cache as the linker
// wrote it, and Linux then maps nearly all of its text and read-only data
// into a process that runs it (on the 6.18 kernel, 2.8 MiB more per plinth
// member than the same file read back from the disk); a binary built
// earlier does not. Evicting both servers' executables before each start
// makes resident memory compare the servers, not the age of their builds.
// Pages a running process maps stay; they are not this run's.
func evictFromPageCache(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("harness: evict %s from the page cache: %w", path, err)
	}
	defer f.Close()
	if err := unix.Fdatasync(int(f.Fd())); err != nil {
		return fmt.Errorf("harness: evict %s from the page cache: fdatasync: %w", path, err)
	}
	if err := unix.Fadvise(int(f.Fd()), 0, 0, unix.FADV_DONTNEED); err != nil {
		return fmt.Errorf("harness: evict %s from the page cache: fadvise: %w", path, err)
	}
	return nil
}
