package raftnode

import (
	"fmt"
	"io"
	"log"
	"strings"
	"testing"

	"go.etcd.io/raft/v3"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

func app(to, term, prevIndex, prevTerm, commit uint64, ents ...uint64) *raftpb.Message {
	m := &raftpb.Message{Type: raftpb.MessageType_MsgApp.Enum(), To: new(to), From: new(uint64(1)), Term: new(term),
		Index: new(prevIndex), LogTerm: new(prevTerm), Commit: new(commit)}
	for i, t := range ents {
		m.Entries = append(m.Entries, &raftpb.Entry{Index: new(prevIndex + 1 + uint64(i)), Term: new(t), Data: []byte("x")})
	}
	return m
}

func appResp(to, term, index uint64, reject bool) *raftpb.Message {
	m := &raftpb.Message{Type: raftpb.MessageType_MsgAppResp.Enum(), To: new(to), From: new(uint64(2)), Term: new(term), Index: new(index)}
	if reject {
		m.Reject, m.RejectHint = new(true), new(index)
	}
	return m
}

func prop(to uint64, data ...string) *raftpb.Message {
	m := &raftpb.Message{Type: raftpb.MessageType_MsgProp.Enum(), To: new(to), From: new(uint64(2))}
	for _, d := range data {
		m.Entries = append(m.Entries, &raftpb.Entry{Data: []byte(d)})
	}
	return m
}

// describe prints messages in a form the table can compare.
func describe(msgs []*raftpb.Message) string {
	var parts []string
	for _, m := range msgs {
		s := fmt.Sprintf("%v to=%d term=%d", m.GetType(), m.GetTo(), m.GetTerm())
		switch m.GetType() {
		case raftpb.MessageType_MsgApp:
			s += fmt.Sprintf(" prev=%d/%d commit=%d ents=", m.GetIndex(), m.GetLogTerm(), m.GetCommit())
			for _, e := range m.GetEntries() {
				s += fmt.Sprintf("%d/%d,", e.GetIndex(), e.GetTerm())
			}
		case raftpb.MessageType_MsgAppResp:
			s += fmt.Sprintf(" index=%d reject=%v", m.GetIndex(), m.GetReject())
		case raftpb.MessageType_MsgProp:
			s += " data="
			for _, e := range m.GetEntries() {
				s += string(e.GetData())
			}
		}
		parts = append(parts, s)
	}
	return strings.Join(parts, "; ")
}

func TestCoalesce(t *testing.T) {
	hb := &raftpb.Message{Type: raftpb.MessageType_MsgHeartbeat.Enum(), To: new(uint64(2)), From: new(uint64(1)), Term: new(uint64(5))}
	tests := []struct {
		name string
		in   []*raftpb.Message
		want []*raftpb.Message
	}{
		{
			name: "appends that follow on merge, the last commit wins",
			in:   []*raftpb.Message{app(2, 5, 10, 4, 9, 5, 5), app(2, 5, 12, 5, 10, 5), app(2, 5, 13, 5, 12)},
			want: []*raftpb.Message{app(2, 5, 10, 4, 12, 5, 5, 5)},
		},
		{
			name: "appends to two peers merge per peer",
			in:   []*raftpb.Message{app(2, 5, 10, 5, 9, 5), app(3, 5, 7, 5, 9, 5, 5, 5, 5), app(2, 5, 11, 5, 10, 5), app(3, 5, 11, 5, 10, 5)},
			want: []*raftpb.Message{app(2, 5, 10, 5, 10, 5, 5), app(3, 5, 7, 5, 10, 5, 5, 5, 5, 5)},
		},
		{
			name: "an append that does not follow on stays apart",
			in:   []*raftpb.Message{app(2, 5, 10, 5, 9, 5), app(2, 5, 5, 3, 9, 5)},
			want: []*raftpb.Message{app(2, 5, 10, 5, 9, 5), app(2, 5, 5, 3, 9, 5)},
		},
		{
			name: "an append anchored at another term stays apart",
			in:   []*raftpb.Message{app(2, 5, 10, 5, 9, 5), app(2, 5, 11, 4, 9, 5)},
			want: []*raftpb.Message{app(2, 5, 10, 5, 9, 5), app(2, 5, 11, 4, 9, 5)},
		},
		{
			name: "another message between keeps the order",
			in:   []*raftpb.Message{app(2, 5, 10, 5, 9, 5), hb, app(2, 5, 11, 5, 10, 5)},
			want: []*raftpb.Message{app(2, 5, 10, 5, 9, 5), hb, app(2, 5, 11, 5, 10, 5)},
		},
		{
			name: "acknowledgements keep the highest",
			in:   []*raftpb.Message{appResp(1, 5, 10, false), appResp(1, 5, 14, false), appResp(1, 5, 12, false)},
			want: []*raftpb.Message{appResp(1, 5, 14, false)},
		},
		{
			name: "rejections and other terms stay apart",
			in:   []*raftpb.Message{appResp(1, 5, 10, false), appResp(1, 5, 9, true), appResp(1, 5, 11, false), appResp(1, 6, 12, false)},
			want: []*raftpb.Message{appResp(1, 5, 10, false), appResp(1, 5, 9, true), appResp(1, 5, 11, false), appResp(1, 6, 12, false)},
		},
		{
			name: "proposals merge in order",
			in:   []*raftpb.Message{prop(1, "a", "b"), prop(1, "c"), appResp(1, 5, 3, false), prop(1, "d")},
			want: []*raftpb.Message{prop(1, "a", "b", "c"), appResp(1, 5, 3, false), prop(1, "d")},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := describe(tt.in)
			got := describe(coalesce(tt.in))
			if want := describe(tt.want); got != want {
				t.Errorf("coalesce:\n got %s\nwant %s", got, want)
			}
			if after := describe(tt.in); after != before {
				t.Errorf("coalesce changed its input:\n was %s\n now %s", before, after)
			}
		})
	}
}

func TestCoalesceBoundsMergedSize(t *testing.T) {
	big := func(prev uint64) *raftpb.Message {
		m := app(2, 5, prev, 5, 0, 5)
		m.Entries[0].Data = make([]byte, maxCoalescedBytes/2+1)
		return m
	}
	if got := coalesce([]*raftpb.Message{big(10), big(11)}); len(got) != 2 {
		t.Errorf("two appends over the size bound merged into %d message(s)", len(got))
	}
}

// TestCoalescedReplicationMatches runs three Raft members that exchange
// coalesced messages, and checks that every member's log ends the same, with
// every proposal committed once, in order.
func TestCoalescedReplicationMatches(t *testing.T) {
	ids := []uint64{1, 2, 3}
	stores := map[uint64]*raft.MemoryStorage{}
	nodes := map[uint64]*raft.RawNode{}
	var peers []raft.Peer
	for _, id := range ids {
		peers = append(peers, raft.Peer{ID: id})
	}
	for _, id := range ids {
		s := raft.NewMemoryStorage()
		rn, err := raft.NewRawNode(&raft.Config{ID: id, ElectionTick: 10, HeartbeatTick: 1, Storage: s,
			MaxSizePerMsg: 1 << 20, MaxInflightMsgs: 256, MaxUncommittedEntriesSize: 1 << 30, Logger: &raft.DefaultLogger{Logger: log.New(io.Discard, "", 0)}})
		if err != nil {
			t.Fatal(err)
		}
		if err := rn.Bootstrap(peers); err != nil {
			t.Fatal(err)
		}
		stores[id], nodes[id] = s, rn
	}
	committed := map[uint64][]string{}
	var inflight []*raftpb.Message
	var made, delivered int
	// round runs one Ready on every member and delivers what they send.
	round := func() {
		var next []*raftpb.Message
		for _, m := range inflight {
			_ = nodes[m.GetTo()].Step(m)
		}
		for _, id := range ids {
			rn := nodes[id]
			if !rn.HasReady() {
				continue
			}
			rd := rn.Ready()
			if !raft.IsEmptyHardState(rd.HardState) {
				_ = stores[id].SetHardState(rd.HardState)
			}
			_ = stores[id].Append(rd.Entries)
			sent := coalesce(rd.Messages)
			made, delivered = made+len(rd.Messages), delivered+len(sent)
			next = append(next, sent...)
			for _, e := range rd.CommittedEntries {
				if e.GetType() == raftpb.EntryType_EntryConfChange {
					var cc raftpb.ConfChange
					if err := proto.Unmarshal(e.GetData(), &cc); err == nil {
						rn.ApplyConfChange(&cc)
					}
					continue
				}
				if len(e.GetData()) > 0 {
					committed[id] = append(committed[id], string(e.GetData()))
				}
			}
			rn.Advance(rd)
		}
		inflight = next
	}
	round()
	if err := nodes[1].Campaign(); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		round()
	}
	var want []string
	for i := range 300 {
		// Proposals through the leader and both followers, several per
		// round, so that every member's Ready holds several messages
		// to the same peer.
		d := fmt.Sprintf("p%03d", i)
		want = append(want, d)
		from := ids[i%3]
		if err := nodes[from].Propose([]byte(d)); err != nil {
			t.Fatal(err)
		}
		if i%5 == 4 {
			round()
		}
	}
	for range 50 {
		round()
	}
	if delivered >= made {
		t.Errorf("coalescing sent %d of %d messages", delivered, made)
	}
	for _, id := range ids {
		got := committed[id]
		if len(got) != len(want) {
			t.Fatalf("member %d committed %d entries, want %d", id, len(got), len(want))
		}
		seen := map[string]bool{}
		for _, d := range got {
			if seen[d] {
				t.Fatalf("member %d committed %s twice", id, d)
			}
			seen[d] = true
		}
		if id != 1 && strings.Join(got, ",") != strings.Join(committed[1], ",") {
			t.Fatalf("member %d committed another order than the leader", id)
		}
	}
}
