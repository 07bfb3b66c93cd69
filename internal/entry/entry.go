// Package entry encodes the requests that Raft entries carry, and decodes
// them for the apply loop; it also decodes the configuration changes that
// entries of the conf change types carry, for the raft loop and the apply
// loop alike.
//
// A request is an etcdserverpb.InternalRaftRequest. Puts, the most frequent
// request, have an encoding of their own: a marker byte that no protobuf
// message starts with, then the put's fields, so that encoding is a few
// appends and decoding allocates only the PutRequest, whose key and value
// point into the entry's data. Every other request is the protobuf encoding
// of its InternalRaftRequest.
//
// A lease checkpoint (LeaseCheckpointRequest) carries each lease's remaining
// TTL in milliseconds, not etcd's seconds: the remaining time must survive a
// change of leader without rounding up by a second each time.
//
// Both encodings are in Raft logs on disk: a change to either must keep
// decoding what is there.
package entry

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	raftpb "go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"
)

// putMarker starts a put's own encoding. A protobuf message never starts with
// a zero byte: that would be field number 0, which is invalid.
const putMarker = 0x00

// Flags of a put, in its encoding's flag byte.
const (
	flagPrevKv      = 1 << 0
	flagIgnoreValue = 1 << 1
	flagIgnoreLease = 1 << 2
	knownFlags      = flagPrevKv | flagIgnoreValue | flagIgnoreLease
)

// ErrCorrupt marks entry data that no Encode produced.
var ErrCorrupt = errors.New("entry: corrupt request encoding")

// Encode encodes req for a Raft entry. It also returns the length of req's
// protobuf encoding, whichever encoding it used: request size limits are
// etcd's, and etcd measures that one.
func Encode(req *pb.InternalRaftRequest) (data []byte, protoSize int, err error) {
	if p := req.Put; p != nil {
		// The sizes are equal only if req holds nothing but its ID and a
		// put of known fields: anything more would add to the protobuf
		// encoding.
		if size := proto.Size(req); size == protoPutRequestSize(req.ID, p) {
			return appendPut(make([]byte, 0, putEncodedLen(req.ID, p)), req.ID, p), size, nil
		}
	}
	data, err = proto.Marshal(req)
	if err != nil {
		return nil, 0, fmt.Errorf("entry: encode request: %w", err)
	}
	return data, len(data), nil
}

// Decode decodes data, as Encode made it, into req. A decoded put's key and
// value share data's memory: data must not change while req is in use.
func Decode(data []byte, req *pb.InternalRaftRequest) error {
	if len(data) > 0 && data[0] == putMarker {
		return decodePut(data[1:], req)
	}
	if err := proto.Unmarshal(data, req); err != nil {
		return fmt.Errorf("%w: %v", ErrCorrupt, err)
	}
	return nil
}

// A put's encoding: putMarker, then the request ID (uvarint), the key's length
// (uvarint) and bytes, the value's length (uvarint) and bytes, the lease
// (varint), and one byte of flags.
func appendPut(b []byte, id uint64, p *pb.PutRequest) []byte {
	b = append(b, putMarker)
	b = binary.AppendUvarint(b, id)
	b = binary.AppendUvarint(b, uint64(len(p.Key)))
	b = append(b, p.Key...)
	b = binary.AppendUvarint(b, uint64(len(p.Value)))
	b = append(b, p.Value...)
	b = binary.AppendVarint(b, p.Lease)
	var flags byte
	if p.PrevKv {
		flags |= flagPrevKv
	}
	if p.IgnoreValue {
		flags |= flagIgnoreValue
	}
	if p.IgnoreLease {
		flags |= flagIgnoreLease
	}
	return append(b, flags)
}

// putEncodedLen bounds the length of a put's encoding (the lease's varint is
// counted at its longest), so that appendPut never grows its buffer.
func putEncodedLen(id uint64, p *pb.PutRequest) int {
	return 1 + uvarintLen(id) + uvarintLen(uint64(len(p.Key))) + len(p.Key) +
		uvarintLen(uint64(len(p.Value))) + len(p.Value) + binary.MaxVarintLen64 + 1
}

func decodePut(b []byte, req *pb.InternalRaftRequest) error {
	id, b, err := uvarint(b)
	if err != nil {
		return err
	}
	key, b, err := lengthPrefixed(b)
	if err != nil {
		return err
	}
	value, b, err := lengthPrefixed(b)
	if err != nil {
		return err
	}
	lease, n := binary.Varint(b)
	if n <= 0 {
		return fmt.Errorf("%w: put lease", ErrCorrupt)
	}
	b = b[n:]
	if len(b) != 1 || b[0]&^knownFlags != 0 {
		return fmt.Errorf("%w: put flags", ErrCorrupt)
	}
	flags := b[0]
	*req = pb.InternalRaftRequest{ID: id, Put: &pb.PutRequest{
		Key:         nilIfEmpty(key),
		Value:       nilIfEmpty(value),
		Lease:       lease,
		PrevKv:      flags&flagPrevKv != 0,
		IgnoreValue: flags&flagIgnoreValue != 0,
		IgnoreLease: flags&flagIgnoreLease != 0,
	}}
	return nil
}

// nilIfEmpty keeps decoded requests equal to what protobuf decoding gives:
// an empty bytes field decodes to nil.
func nilIfEmpty(b []byte) []byte {
	if len(b) == 0 {
		return nil
	}
	return b
}

func uvarint(b []byte) (uint64, []byte, error) {
	v, n := binary.Uvarint(b)
	if n <= 0 {
		return 0, nil, fmt.Errorf("%w: bad varint", ErrCorrupt)
	}
	return v, b[n:], nil
}

func lengthPrefixed(b []byte) (field, rest []byte, err error) {
	n, b, err := uvarint(b)
	if err != nil {
		return nil, nil, err
	}
	if n > uint64(len(b)) {
		return nil, nil, fmt.Errorf("%w: field of %d bytes in %d", ErrCorrupt, n, len(b))
	}
	return b[:n:n], b[n:], nil
}

// protoPutRequestSize is proto.Size of InternalRaftRequest{ID: id, Put: p},
// computed from protobuf's wire format: each field present is a one-byte tag
// (all field numbers here are below 16) and its varint or length-prefixed
// bytes; proto3 leaves out zero values.
func protoPutRequestSize(id uint64, p *pb.PutRequest) int {
	put := bytesFieldSize(p.Key) + bytesFieldSize(p.Value)
	if p.Lease != 0 {
		put += 1 + uvarintLen(uint64(p.Lease))
	}
	for _, set := range []bool{p.PrevKv, p.IgnoreValue, p.IgnoreLease} {
		if set {
			put += 2
		}
	}
	size := 1 + uvarintLen(uint64(put)) + put // field 4, put
	if id != 0 {
		size += 1 + uvarintLen(id) // field 1, ID
	}
	return size
}

func bytesFieldSize(b []byte) int {
	if len(b) == 0 {
		return 0
	}
	return 1 + uvarintLen(uint64(len(b))) + len(b)
}

func uvarintLen(v uint64) int { return (bits.Len64(v|1) + 6) / 7 }

// ErrNotConfChange marks an entry that is neither a request nor a
// configuration change: a type this version does not know.
var ErrNotConfChange = errors.New("entry: not a configuration change")

// DecodeConfChange decodes the configuration change in e, an entry of type
// EntryConfChange or EntryConfChangeV2, and returns the ID of the request
// that proposed it (a V1 change's ID; 0 for V2 and for changes nobody waits
// on).
func DecodeConfChange(e *raftpb.Entry) (cc raftpb.ConfChangeI, requestID uint64, err error) {
	switch e.GetType() {
	case raftpb.EntryType_EntryConfChange:
		var c raftpb.ConfChange
		if err := proto.Unmarshal(e.GetData(), &c); err != nil {
			return nil, 0, fmt.Errorf("entry: decode conf change at %d: %w: %v", e.GetIndex(), ErrCorrupt, err)
		}
		return &c, c.GetId(), nil
	case raftpb.EntryType_EntryConfChangeV2:
		var c raftpb.ConfChangeV2
		if err := proto.Unmarshal(e.GetData(), &c); err != nil {
			return nil, 0, fmt.Errorf("entry: decode conf change at %d: %w: %v", e.GetIndex(), ErrCorrupt, err)
		}
		return &c, 0, nil
	}
	return nil, 0, fmt.Errorf("%w: entry %d has type %v", ErrNotConfChange, e.GetIndex(), e.GetType())
}
