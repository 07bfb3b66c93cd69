package cluster

import (
	"fmt"
	"math"
	"testing"

	"github.com/anishathalye/porcupine"
)

// kvKind is the kind of one op of the linearizability test.
type kvKind int

const (
	kvPut kvKind = iota // key = value
	kvGet               // a linearizable get of key
	kvCAS               // txn: if value(key) == expect then key = value
)

// kvInput is one op as its client issued it.
type kvInput struct {
	kind   kvKind
	key    string
	value  string // put, cas: the value written (unique in the test)
	expect string // cas
}

// kvOutput is what the client was told. An op without an answer has
// unknown set and, by porcupine's convention, returns at the end of time:
// it may take effect at any moment after its call, or never.
type kvOutput struct {
	unknown bool
	value   string // get: the value read, "" for an absent key
	ok      bool   // cas: whether the compare held
	rev     int64  // the header revision of the answer
}

// kvModel is one register per key ("" while absent), checked one key at a
// time. A compare on an absent key fails, as etcd's value compare does.
var kvModel = porcupine.Model{
	Partition: func(history []porcupine.Operation) [][]porcupine.Operation {
		byKey := map[string][]porcupine.Operation{}
		var keys []string
		for _, op := range history {
			k := op.Input.(kvInput).key
			if _, ok := byKey[k]; !ok {
				keys = append(keys, k)
			}
			byKey[k] = append(byKey[k], op)
		}
		out := make([][]porcupine.Operation, 0, len(keys))
		for _, k := range keys {
			out = append(out, byKey[k])
		}
		return out
	},
	Init: func() any { return "" },
	Step: func(state, input, output any) (bool, any) {
		st, in, out := state.(string), input.(kvInput), output.(kvOutput)
		switch in.kind {
		case kvPut:
			return true, in.value
		case kvGet:
			return out.value == st, st
		default:
			holds := st != "" && st == in.expect
			if out.unknown {
				if holds {
					return true, in.value
				}
				return true, st
			}
			if out.ok != holds {
				return false, st
			}
			if holds {
				return true, in.value
			}
			return true, st
		}
	},
	DescribeOperation: func(input, output any) string {
		in, out := input.(kvInput), output.(kvOutput)
		res := ""
		switch {
		case out.unknown:
			res = " -> ?"
		case in.kind == kvGet:
			res = fmt.Sprintf(" -> %q @%d", out.value, out.rev)
		case in.kind == kvCAS:
			res = fmt.Sprintf(" -> %v @%d", out.ok, out.rev)
		default:
			res = fmt.Sprintf(" @%d", out.rev)
		}
		switch in.kind {
		case kvPut:
			return fmt.Sprintf("put(%s, %q)%s", in.key, in.value, res)
		case kvGet:
			return fmt.Sprintf("get(%s)%s", in.key, res)
		default:
			return fmt.Sprintf("cas(%s, %q -> %q)%s", in.key, in.expect, in.value, res)
		}
	},
	DescribeState: func(state any) string { return fmt.Sprintf("%q", state.(string)) },
}

// TestKVModel proves the model on tiny histories: it accepts what a
// linearizable store may answer and rejects stale reads, lost writes and
// compare-and-sets that decided against the value they compared.
func TestKVModel(t *testing.T) {
	inf := int64(math.MaxInt64)
	put := func(k, v string, call, ret int64) porcupine.Operation {
		out := kvOutput{unknown: ret == inf}
		return porcupine.Operation{Input: kvInput{kind: kvPut, key: k, value: v}, Output: out, Call: call, Return: ret}
	}
	get := func(k, v string, call, ret int64) porcupine.Operation {
		return porcupine.Operation{Input: kvInput{kind: kvGet, key: k}, Output: kvOutput{value: v}, Call: call, Return: ret}
	}
	cas := func(k, expect, v string, ok bool, call, ret int64) porcupine.Operation {
		out := kvOutput{unknown: ret == inf, ok: ok}
		return porcupine.Operation{Input: kvInput{kind: kvCAS, key: k, value: v, expect: expect}, Output: out, Call: call, Return: ret}
	}
	tests := []struct {
		name string
		hist []porcupine.Operation
		want bool
	}{
		{"read after write", []porcupine.Operation{put("a", "1", 0, 10), get("a", "1", 20, 30)}, true},
		{"stale read", []porcupine.Operation{put("a", "1", 0, 10), put("a", "2", 11, 19), get("a", "1", 20, 30)}, false},
		{"keys are independent", []porcupine.Operation{put("a", "1", 0, 10), put("b", "2", 11, 19), get("a", "1", 20, 30)}, true},
		{"unknown put seen later", []porcupine.Operation{put("a", "1", 0, 10), put("a", "2", 11, inf), get("a", "1", 20, 30), get("a", "2", 40, 50)}, true},
		{"unknown put never applied", []porcupine.Operation{put("a", "1", 0, 10), put("a", "2", 11, inf), get("a", "1", 40, 50)}, true},
		{"lost write", []porcupine.Operation{put("a", "1", 0, 10), get("a", "1", 20, 30), put("a", "2", 31, 35), get("a", "1", 40, 50)}, false},
		{"cas holds", []porcupine.Operation{put("a", "1", 0, 10), cas("a", "1", "2", true, 20, 30), get("a", "2", 40, 50)}, true},
		{"cas fails on other value", []porcupine.Operation{put("a", "1", 0, 10), cas("a", "0", "2", false, 20, 30), get("a", "1", 40, 50)}, true},
		{"cas succeeds against a stale value", []porcupine.Operation{put("a", "1", 0, 10), put("a", "2", 11, 19), cas("a", "1", "3", true, 20, 30)}, false},
		{"cas fails though it held", []porcupine.Operation{put("a", "1", 0, 10), cas("a", "1", "2", false, 20, 30)}, false},
		{"cas on absent key", []porcupine.Operation{cas("a", "", "1", true, 0, 10)}, false},
		{"unknown cas applied", []porcupine.Operation{put("a", "1", 0, 10), cas("a", "1", "2", false, 20, inf), get("a", "2", 40, 50)}, true},
		{"unknown cas cannot apply", []porcupine.Operation{put("a", "1", 0, 10), cas("a", "0", "2", false, 20, inf), get("a", "2", 40, 50)}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := porcupine.CheckOperations(kvModel, tt.hist); got != tt.want {
				t.Errorf("linearizable = %v, want %v", got, tt.want)
			}
		})
	}
}
