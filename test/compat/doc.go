// Package compat holds the differential tests that hold plinth to etcd's
// answers on the wire.
//
// Every test starts a reference etcd (v3.7.3, embedded in the test process)
// and the target (the plinth binary built from this repository, or a binary
// named by COMPAT_TARGET_BIN, or with COMPAT_SELFTEST=1 a second embedded
// etcd; the TestCluster tests run the target as a 3-member cluster and talk
// to a follower), sends both the same KV requests over raw gRPC, and requires
// the same answer field by field: the same error code and message, or the same
// response once the few fields that must differ between two clusters
// (cluster and member ids, raft term) are normalised. See README.md.
//
// The package has no non-test code; it must never import plinth's internal
// packages: it speaks to plinth only over the wire, as a client would.
package compat
