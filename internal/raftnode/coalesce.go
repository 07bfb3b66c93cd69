package raftnode

import (
	raftpb "go.etcd.io/raft/v3/raftpb"
)

// Raft makes one message per step: a leader appends and sends a MsgApp to
// every follower for each proposal it steps, and again for each
// acknowledgement that moves its commit index; a follower answers every
// MsgApp with its own MsgAppResp; a follower forwards every batch of
// proposals as its own MsgProp. Under load one Ready holds many of each for
// the same peer (a three-member put load made ~1 MsgApp and ~1 MsgAppResp
// per entry, per follower), and every one of them is encoded, written, read,
// decoded and stepped.
//
// coalesce sends what they say in fewer messages, without changing what the
// peer learns or the order it learns it in:
//
//   - consecutive MsgApps to a peer whose entries follow on from each other
//     become one MsgApp (the first's anchor, all the entries, the last
//     commit index): the follower appends the same entries and learns the
//     same commit, and its one acknowledgement frees every message's place
//     in the leader's flow control (Inflights.FreeLE);
//   - consecutive accepting MsgAppResps to a peer of the same term become
//     the one with the highest index: each says "my log matches yours up to
//     Index", and within a term the highest says all the others do;
//   - consecutive MsgProps to a peer become one MsgProp with all their
//     entries, in order (the leader appends them as it would one by one).
//
// Consecutive means no other message to the same peer comes between them;
// messages to other peers are independent streams. Every other message goes
// as it is. Messages are never changed in place (raft may still hold their
// entry slices): a merge makes a new message and a new entry slice.
func coalesce(msgs []*raftpb.Message) []*raftpb.Message {
	if len(msgs) < 2 {
		return msgs
	}
	out := make([]*raftpb.Message, 0, len(msgs))
	// last is, per peer, the index in out of the last message to it and
	// the entry bytes it carries.
	type slot struct {
		to    uint64
		at    int
		bytes int
		owned bool // out[at] was made here: a merge may append to it
	}
	var last []slot
	for _, m := range msgs {
		i := -1
		for j := range last {
			if last[j].to == m.GetTo() {
				i = j
				break
			}
		}
		if i >= 0 {
			sl := &last[i]
			if merged, ok := merge(out[sl.at], m, sl.bytes, sl.owned); ok {
				sl.owned = sl.owned || merged != out[sl.at] && merged != m
				out[sl.at] = merged
				sl.bytes += entryBytes(m)
				continue
			}
		}
		out = append(out, m)
		if i < 0 {
			last = append(last, slot{to: m.GetTo()})
			i = len(last) - 1
		}
		last[i].at, last[i].bytes, last[i].owned = len(out)-1, entryBytes(m), false
	}
	return out
}

// maxCoalescedBytes bounds the entry bytes of a merged message: Raft's own
// MaxSizePerMsg (see New).
const maxCoalescedBytes = 1 << 20

// merge returns the one message that says what a then b say, if there is one.
// aBytes is the entry bytes a carries; owned says a was made by an earlier
// merge, so that its entries may be appended to instead of copied.
func merge(a, b *raftpb.Message, aBytes int, owned bool) (*raftpb.Message, bool) {
	if a.GetType() != b.GetType() || a.GetTo() != b.GetTo() || a.GetFrom() != b.GetFrom() ||
		a.GetTerm() != b.GetTerm() || !plain(a) || !plain(b) {
		return nil, false
	}
	switch a.GetType() {
	case raftpb.MessageType_MsgAppResp:
		if a.GetReject() || b.GetReject() || a.GetCommit() != b.GetCommit() {
			return nil, false
		}
		if b.GetIndex() > a.GetIndex() {
			return b, true
		}
		return a, true
	case raftpb.MessageType_MsgApp:
		if a.GetReject() || b.GetReject() || aBytes+entryBytes(b) > maxCoalescedBytes {
			return nil, false
		}
		ents := a.GetEntries()
		endIndex, endTerm := a.GetIndex(), a.GetLogTerm()
		if len(ents) > 0 {
			endIndex, endTerm = ents[len(ents)-1].GetIndex(), ents[len(ents)-1].GetTerm()
		}
		if endIndex != a.GetIndex()+uint64(len(ents)) || b.GetIndex() != endIndex || b.GetLogTerm() != endTerm {
			return nil, false
		}
		if owned {
			a.Entries = append(a.Entries, b.GetEntries()...)
			a.Commit = new(max(a.GetCommit(), b.GetCommit()))
			return a, true
		}
		return &raftpb.Message{
			Type: a.Type, To: a.To, From: a.From, Term: a.Term,
			Index: a.Index, LogTerm: a.LogTerm,
			Entries: concatEntries(ents, b.GetEntries()),
			Commit:  new(max(a.GetCommit(), b.GetCommit())),
		}, true
	case raftpb.MessageType_MsgProp:
		if aBytes+entryBytes(b) > maxCoalescedBytes {
			return nil, false
		}
		if owned {
			a.Entries = append(a.Entries, b.GetEntries()...)
			return a, true
		}
		return &raftpb.Message{
			Type: a.Type, To: a.To, From: a.From, Term: a.Term,
			Entries: concatEntries(a.GetEntries(), b.GetEntries()),
		}, true
	}
	return nil, false
}

// plain reports whether m carries nothing merge does not look at.
func plain(m *raftpb.Message) bool {
	return len(m.GetContext()) == 0 && m.GetSnapshot() == nil && len(m.GetResponses()) == 0 &&
		m.GetRejectHint() == 0 && m.GetVote() == 0
}

func concatEntries(a, b []*raftpb.Entry) []*raftpb.Entry {
	out := make([]*raftpb.Entry, 0, len(a)+len(b))
	return append(append(out, a...), b...)
}

func entryBytes(m *raftpb.Message) int {
	n := 0
	for _, e := range m.GetEntries() {
		n += len(e.GetData())
	}
	return n
}
