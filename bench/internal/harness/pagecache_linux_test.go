package harness

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// residentPages maps the file at path and counts its pages in the page cache.
func residentPages(t *testing.T, path string, size int) int {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	pages := (size + os.Getpagesize() - 1) / os.Getpagesize()
	vec := make([]byte, pages)
	if _, _, errno := syscall.Syscall(syscall.SYS_MINCORE, uintptr(unsafe.Pointer(&mem[0])), uintptr(size), uintptr(unsafe.Pointer(&vec[0]))); errno != 0 {
		t.Fatalf("mincore: %v", errno)
	}
	n := 0
	for _, b := range vec {
		n += int(b & 1)
	}
	return n
}

func TestEvictFromPageCache(t *testing.T) {
	const size = 4 << 20
	path := filepath.Join(t.TempDir(), "bin")
	if err := os.WriteFile(path, make([]byte, size), 0o755); err != nil {
		t.Fatal(err)
	}
	if n := residentPages(t, path, size); n == 0 {
		t.Skip("a file just written is not in the page cache here: nothing to show")
	}
	if err := evictFromPageCache(path); err != nil {
		t.Fatal(err)
	}
	if n := residentPages(t, path, size); n != 0 {
		t.Fatalf("%d pages of a 4 MiB file still in the page cache after eviction", n)
	}
	if err := evictFromPageCache(filepath.Join(t.TempDir(), "missing")); err == nil {
		t.Fatal("evicting a missing file: no error")
	}
}
