package proccpu

import (
	"os"
	"testing"
	"time"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name string
		stat string
		want int64
	}{
		{
			name: "plain",
			stat: "4242 (etcd) S 1 4242 4242 0 -1 4194560 12345 0 0 0 700 52 0 0 20 0 14 0 1000 2000000 5000 18446744073709551615 1 1 0 0 0 0 0 0 2143420159 0 0 0 17 1 0 0 0 0 0",
			want: 752,
		},
		{
			name: "command name with spaces and parentheses",
			stat: "7 (a b) (c)) R 1 7 7 0 -1 0 0 0 0 0 3 4 0 0 20 0 1 0 1 1 1",
			want: 7,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseStat([]byte(tt.stat))
			if err != nil {
				t.Fatal(err)
			}
			if got != tt.want {
				t.Fatalf("parseStat = %d, want %d", got, tt.want)
			}
		})
	}
	if _, err := parseStat([]byte("1 (x) S 1 2")); err == nil {
		t.Fatal("short stat: want an error")
	}
}

// TestTimeGrowsWithWork burns CPU in this process until /proc reports at least 50ms
// more, which it must do well before the wall-clock limit even on a busy machine.
func TestTimeGrowsWithWork(t *testing.T) {
	before, err := Time(os.Getpid())
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(10 * time.Second)
	x := 0
	for {
		for i := 0; i < 1_000_000; i++ {
			x += i
		}
		after, err := Time(os.Getpid())
		if err != nil {
			t.Fatal(err)
		}
		if after-before >= 50*time.Millisecond {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("spun 10s but /proc reports only %v of CPU (x=%d)", after-before, x)
		}
	}
	if ClockTicks() <= 0 {
		t.Fatalf("ClockTicks() = %d", ClockTicks())
	}
}
