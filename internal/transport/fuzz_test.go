package transport

import (
	"bufio"
	"bytes"
	"testing"

	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// FuzzReadMessage: whatever bytes a peer sends, reading them as a stream of
// framed messages fails or yields messages, never panics, and never reads
// past a frame's length; a frame of an encoded message reads back equal.
func FuzzReadMessage(f *testing.F) {
	var frame bytes.Buffer
	w := bufio.NewWriter(&frame)
	var buf []byte
	if err := writeMessage(w, heartbeat(1, 2, 3), &buf); err != nil {
		f.Fatal(err)
	}
	_ = w.Flush()
	f.Add(frame.Bytes())
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bufio.NewReader(bytes.NewReader(data))
		var buf []byte
		for range 100 {
			m, err := readMessage(r, &buf)
			if err != nil {
				return
			}
			// A message that decoded encodes again.
			if _, err := proto.Marshal(m); err != nil {
				t.Fatalf("decoded message does not encode: %v", err)
			}
		}
	})
}

func TestFramedMessageRoundTrip(t *testing.T) {
	typ := raftpb.MessageType_MsgApp
	from, to, term, index := uint64(1), uint64(2), uint64(7), uint64(41)
	data := []byte("entry data")
	m := &raftpb.Message{Type: &typ, From: &from, To: &to, Term: &term, Index: &index,
		Entries: []*raftpb.Entry{{Term: &term, Index: proto.Uint64(42), Data: data}}}
	var frame bytes.Buffer
	w := bufio.NewWriter(&frame)
	var buf []byte
	for range 2 {
		if err := writeMessage(w, m, &buf); err != nil {
			t.Fatal(err)
		}
	}
	_ = w.Flush()
	r := bufio.NewReader(&frame)
	var rbuf []byte
	first, err := readMessage(r, &rbuf)
	if err != nil {
		t.Fatal(err)
	}
	second, err := readMessage(r, &rbuf)
	if err != nil {
		t.Fatal(err)
	}
	// The read buffer is reused: the first message must not alias it.
	if !proto.Equal(first, m) || !proto.Equal(second, m) {
		t.Fatalf("read back %v and %v, want %v twice", first, second, m)
	}
}
