package crash

import (
	"fmt"
	"math"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"
)

// linearizeTimeout bounds porcupine's search on one key's history.
const linearizeTimeout = 20 * time.Second

// registerInput is one op on a register: a write of value, or a read.
type registerInput struct {
	write bool
	value string
}

// registerModel is a single register per key: a write sets it, a read returns
// it ("" for an absent key).
var registerModel = porcupine.Model{
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		in := input.(registerInput)
		if in.write {
			return true, in.value
		}
		return output.(string) == state.(string), state
	},
	DescribeOperation: func(input, output any) string {
		in := input.(registerInput)
		if in.write {
			return fmt.Sprintf("put(%q)", in.value)
		}
		return fmt.Sprintf("get() -> %q", output.(string))
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state.(string)) },
}

// checkLinearizable checks the puts and linearizable reads of every p key
// with porcupine, across every kill so far. An unacknowledged put takes part
// when a check after a restart found it applied: it took effect at some moment
// after its call, so its return is open-ended. One found not applied, never
// happened.
func (c *checker) checkLinearizable(ops []*op) {
	byKey := map[string][]porcupine.Operation{}
	at := func(t time.Time) int64 { return t.Sub(c.h.epoch).Nanoseconds() }
	for _, o := range ops {
		var p porcupine.Operation
		switch {
		case o.kind == opPut && o.acked:
			p = porcupine.Operation{Input: registerInput{write: true, value: o.value}, Output: "", Call: at(o.start), Return: at(o.end)}
		case o.kind == opPut && o.resolved && o.applied:
			p = porcupine.Operation{Input: registerInput{write: true, value: o.value}, Output: "", Call: at(o.start), Return: math.MaxInt64}
		case o.kind == opRead && o.acked:
			p = porcupine.Operation{Input: registerInput{}, Output: o.value, Call: at(o.start), Return: at(o.end)}
		default:
			continue
		}
		p.ClientId = o.worker
		p.Metadata = fmt.Sprintf("op%d", o.id)
		byKey[o.keys[0]] = append(byKey[o.keys[0]], p)
	}
	for w := 0; w < putWorkers; w++ {
		for k := 0; k < putKeys; k++ {
			key := pKey(w, k)
			hist := byKey[key]
			res, info := porcupine.CheckOperationsVerbose(registerModel, hist, linearizeTimeout)
			switch res {
			case porcupine.Illegal:
				path := filepath.Join(os.TempDir(), fmt.Sprintf("plinth-crash-%s-%d.html", filepath.Base(key), time.Now().UnixNano()))
				if err := porcupine.VisualizePath(registerModel, info, path); err != nil {
					path = fmt.Sprintf("(visualization failed: %v)", err)
				}
				c.errorf("NOT LINEARIZABLE: the %d puts and reads of %s; see %s", len(hist), key, path)
			case porcupine.Unknown:
				c.errorf("linearizability of %s (%d ops) undecided after %v", key, len(hist), linearizeTimeout)
			}
		}
	}
}

// TestRegisterModel proves the checker's model on two tiny histories: a read
// that misses a write acknowledged before it started is not linearizable.
func TestRegisterModel(t *testing.T) {
	put := func(v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: registerInput{write: true, value: v}, Output: "", Call: call, Return: ret}
	}
	get := func(v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: registerInput{}, Output: v, Call: call, Return: ret}
	}
	tests := []struct {
		name string
		hist []porcupine.Operation
		want bool
	}{
		{"read after write", []porcupine.Operation{put("a", 0, 10), get("a", 20, 30)}, true},
		{"concurrent read sees old", []porcupine.Operation{put("a", 0, 10), put("b", 15, 40), get("a", 20, 30)}, true},
		{"stale read", []porcupine.Operation{put("a", 0, 10), put("b", 11, 19), get("a", 20, 30)}, false},
		{"unacknowledged put seen", []porcupine.Operation{put("a", 0, 10), put("b", 11, math.MaxInt64), get("b", 20, 30), get("b", 40, 50)}, true},
		{"lost put", []porcupine.Operation{put("a", 0, 10), get("a", 20, 30), put("b", 31, 35), get("a", 40, 50)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(registerModel, tt.hist); got != tt.want {
				t.Errorf("linearizable = %v, want %v", got, tt.want)
			}
		})
	}
}
