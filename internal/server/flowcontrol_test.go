package server

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/protobuf/proto"
)

// A client connection's flow-control windows are fixed: the member announces
// them at once, and answers a request without pinging the client to measure
// the link, which is what gRPC's growing windows do on the first data they
// receive (and on every burst after it).
func TestClientConnectionsHaveFixedWindows(t *testing.T) {
	srv, _ := startServer(t, t.TempDir())
	conn, err := net.DialTimeout("tcp", srv.ClientAddrs()[0], 5*time.Second)
	if err != nil {
		t.Fatalf("dial: %v", err)
	}
	defer func() { _ = conn.Close() }()
	if err := conn.SetDeadline(time.Now().Add(10 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, http2.ClientPreface); err != nil {
		t.Fatalf("preface: %v", err)
	}
	fr := http2.NewFramer(conn, conn)
	if err := fr.WriteSettings(); err != nil {
		t.Fatalf("settings: %v", err)
	}
	var headers bytes.Buffer
	enc := hpack.NewEncoder(&headers)
	for _, f := range [][2]string{
		{":method", "POST"}, {":scheme", "http"}, {":path", "/etcdserverpb.KV/Range"},
		{":authority", "plinth"}, {"content-type", "application/grpc"}, {"te", "trailers"},
	} {
		if err := enc.WriteField(hpack.HeaderField{Name: f[0], Value: f[1]}); err != nil {
			t.Fatal(err)
		}
	}
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: headers.Bytes(), EndHeaders: true}); err != nil {
		t.Fatalf("request headers: %v", err)
	}
	msg, err := proto.Marshal(&pb.RangeRequest{Key: []byte("k"), Serializable: true})
	if err != nil {
		t.Fatal(err)
	}
	body := binary.BigEndian.AppendUint32([]byte{0}, uint32(len(msg))) // not compressed, length
	if err := fr.WriteData(1, true, append(body, msg...)); err != nil {
		t.Fatalf("request body: %v", err)
	}

	// Read until the answer's trailers, then for a moment more: a ping is
	// queued with the answer's frames and may be written after them.
	var streamWindow, connWindowUpdate uint32
	for answered, quiet := false, false; !quiet; {
		f, err := fr.ReadFrame()
		if answered && errors.Is(err, os.ErrDeadlineExceeded) {
			quiet = true
			continue
		}
		if err != nil {
			t.Fatalf("read frame: %v", err)
		}
		switch f := f.(type) {
		case *http2.SettingsFrame:
			if f.IsAck() {
				continue
			}
			if v, ok := f.Value(http2.SettingInitialWindowSize); ok {
				streamWindow = v
			}
			if err := fr.WriteSettingsAck(); err != nil {
				t.Fatal(err)
			}
		case *http2.WindowUpdateFrame:
			if f.StreamID == 0 && connWindowUpdate == 0 {
				connWindowUpdate = f.Increment
			}
		case *http2.PingFrame:
			if !f.IsAck() {
				t.Errorf("the member pinged the client (%x) while answering a request", f.Data)
				if err := fr.WritePing(true, f.Data); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.HeadersFrame:
			if f.StreamID == 1 && f.StreamEnded() && !answered {
				answered = true
				if err := conn.SetReadDeadline(time.Now().Add(200 * time.Millisecond)); err != nil {
					t.Fatal(err)
				}
			}
		case *http2.GoAwayFrame:
			t.Fatalf("the member went away: %v %q", f.ErrCode, f.DebugData())
		}
	}
	if streamWindow != clientStreamWindow {
		t.Errorf("stream window announced %d, want %d", streamWindow, clientStreamWindow)
	}
	if want := uint32(clientConnWindow - 65535); connWindowUpdate != want {
		t.Errorf("connection window grown by %d at first, want %d (to %d)", connWindowUpdate, want, clientConnWindow)
	}
}
