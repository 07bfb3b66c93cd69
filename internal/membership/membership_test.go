package membership

import (
	"slices"
	"testing"
)

func TestRecordRoundTrip(t *testing.T) {
	m := Member{ID: 0xabc, Name: "a", PeerURLs: []string{"http://10.0.0.1:2380"}, ClientURLs: []string{"http://10.0.0.1:2379"}, IsLearner: true}
	got, err := Decode(Encode(m))
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != m.ID || got.Name != m.Name || !slices.Equal(got.PeerURLs, m.PeerURLs) || !slices.Equal(got.ClientURLs, m.ClientURLs) || got.IsLearner != m.IsLearner {
		t.Fatalf("decoded %+v, want %+v", got, m)
	}
}

// FuzzDecode: a record from the log or a peer never panics the decoder; one
// that decodes has a member ID and encodes back to a record that decodes the
// same.
func FuzzDecode(f *testing.F) {
	f.Add(Encode(Member{ID: 1, Name: "a", PeerURLs: []string{"http://127.0.0.1:2380"}}))
	f.Add([]byte{})
	f.Add([]byte{0x08, 0x00})
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := Decode(data)
		if err != nil {
			return
		}
		if m.ID == 0 {
			t.Fatalf("decoded a member with ID 0")
		}
		again, err := Decode(Encode(m))
		if err != nil || again.ID != m.ID || again.Name != m.Name || !slices.Equal(again.PeerURLs, m.PeerURLs) {
			t.Fatalf("re-encoded %+v decodes as %+v, %v", m, again, err)
		}
	})
}
