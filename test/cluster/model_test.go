package cluster

import (
	"cmp"
	"fmt"
	"math"
	"slices"
	"strings"
	"testing"
	"time"

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

// describeIllegal tells in text where porcupine found a history illegal, for
// where the visualization is out of reach (a CI log): for each key whose ops
// have no linearization, the op that the longest partial linearization could
// not take next (of the ops it left out, the first to return), and every op
// of that key that overlaps the second before it, in call order, each with
// its place in that partial linearization.
func describeIllegal(ops []porcupine.Operation, info porcupine.LinearizationInfo) string {
	type opID struct {
		client int
		call   int64
	}
	seconds := func(t int64) string {
		if t == math.MaxInt64 {
			return "never"
		}
		return fmt.Sprintf("%.3fs", float64(t)/1e9)
	}
	parts := kvModel.Partition(ops)
	partials := info.PartialLinearizationsOperations()
	var b strings.Builder
	for p, part := range parts {
		if p >= len(partials) {
			break
		}
		var longest []porcupine.Operation
		for _, l := range partials[p] {
			if len(l) > len(longest) {
				longest = l
			}
		}
		if len(longest) == len(part) {
			continue
		}
		place := map[opID]int{}
		for i, op := range longest {
			place[opID{op.ClientId, op.Call}] = i + 1
		}
		var stuck *porcupine.Operation
		for i := range part {
			if place[opID{part[i].ClientId, part[i].Call}] == 0 && (stuck == nil || part[i].Return < stuck.Return) {
				stuck = &part[i]
			}
		}
		fmt.Fprintf(&b, "%s: %d of %d ops linearized; none can take next: client %d %s [%s .. %s]\n",
			part[0].Input.(kvInput).key, len(longest), len(part), stuck.ClientId,
			kvModel.DescribeOperation(stuck.Input, stuck.Output), seconds(stuck.Call), seconds(stuck.Return))
		window := slices.Clone(part)
		slices.SortFunc(window, func(x, y porcupine.Operation) int { return cmp.Compare(x.Call, y.Call) })
		for _, op := range window {
			if op.Return < stuck.Call-int64(time.Second) || op.Call > stuck.Return {
				continue
			}
			at := "-"
			if i := place[opID{op.ClientId, op.Call}]; i != 0 {
				at = fmt.Sprintf("#%d", i)
			}
			fmt.Fprintf(&b, "  %6s  [%s .. %s] client %d  %s  %v\n", at, seconds(op.Call), seconds(op.Return),
				op.ClientId, kvModel.DescribeOperation(op.Input, op.Output), op.Metadata)
		}
	}
	return b.String()
}

// TestDescribeIllegal: the text names the key, the op no linearization can
// take, and the ops around it with their answering member.
func TestDescribeIllegal(t *testing.T) {
	ms := int64(time.Millisecond)
	op := func(client int, in kvInput, out kvOutput, call, ret int64) porcupine.Operation {
		return porcupine.Operation{ClientId: client, Input: in, Output: out, Call: call * ms, Return: ret * ms, Metadata: "member 7"}
	}
	hist := []porcupine.Operation{
		op(1, kvInput{kind: kvPut, key: "b", value: "1"}, kvOutput{rev: 2}, 0, 10),
		op(1, kvInput{kind: kvPut, key: "a", value: "1"}, kvOutput{rev: 3}, 20, 30),
		op(2, kvInput{kind: kvPut, key: "a", value: "2"}, kvOutput{rev: 4}, 31, 35),
		op(3, kvInput{kind: kvGet, key: "a"}, kvOutput{value: "1", rev: 3}, 40, 50),
	}
	res, info := porcupine.CheckOperationsVerbose(kvModel, hist, 0)
	if res != porcupine.Illegal {
		t.Fatalf("check: %v, want Illegal", res)
	}
	got := describeIllegal(hist, info)
	for _, want := range []string{
		`a: 2 of 3 ops linearized; none can take next: client 3 get(a) -> "1" @3 [0.040s .. 0.050s]`,
		`#2  [0.031s .. 0.035s] client 2  put(a, "2") @4  member 7`,
		`-  [0.040s .. 0.050s] client 3  get(a) -> "1" @3  member 7`,
	} {
		if !strings.Contains(got, want) {
			t.Errorf("description lacks %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, "b:") {
		t.Errorf("description names key b, which is linearizable:\n%s", got)
	}
}
