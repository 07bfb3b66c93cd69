package etcdsnap

import (
	"errors"
	"fmt"

	"google.golang.org/protobuf/encoding/protowire"
)

// etcdLease is a record of etcd's lease bucket: the message leasepb.Lease of
// go.etcd.io/etcd/server/v3 (fields ID = 1, TTL = 2, RemainingTTL = 3, all
// int64). plinth may not depend on etcd's server module, so the record is
// decoded here with protowire.
type etcdLease struct {
	ID           int64
	TTL          int64 // seconds, as granted
	RemainingTTL int64 // seconds at the last checkpoint; 0 if never checkpointed
}

var errLeaseRecord = errors.New("etcdsnap: malformed lease record")

// decodeLease decodes a lease record. Fields it does not know are skipped,
// as protobuf decoders do; a field of a known number with another wire type
// is an error.
func decodeLease(b []byte) (etcdLease, error) {
	var l etcdLease
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return etcdLease{}, fmt.Errorf("%w: tag: %w", errLeaseRecord, protowire.ParseError(n))
		}
		b = b[n:]
		var field *int64
		switch num {
		case 1:
			field = &l.ID
		case 2:
			field = &l.TTL
		case 3:
			field = &l.RemainingTTL
		}
		if field == nil {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return etcdLease{}, fmt.Errorf("%w: field %d: %w", errLeaseRecord, num, protowire.ParseError(n))
			}
			b = b[n:]
			continue
		}
		if typ != protowire.VarintType {
			return etcdLease{}, fmt.Errorf("%w: field %d has wire type %d, want varint", errLeaseRecord, num, typ)
		}
		v, n := protowire.ConsumeVarint(b)
		if n < 0 {
			return etcdLease{}, fmt.Errorf("%w: field %d: %w", errLeaseRecord, num, protowire.ParseError(n))
		}
		*field = int64(v)
		b = b[n:]
	}
	return l, nil
}
