// Package election tests the election library (github.com/plinthdb/plinth/election)
// as applications run it: electors are separate processes (the test binary
// run again in elector mode), each with its own client over every member of
// a three-member plinth cluster run through internal/testmember. The test
// kills the leading elector (kill -9) and pauses one (SIGSTOP) and checks
// that another takes over within the lease duration (plus slack); it resumes
// the paused one and checks that its writes are refused (ErrFenced); it kills
// the plinth leader member on the way. At the end it reads the whole history
// from the cluster and checks fencing there: no write made under a term was
// applied after a later term began.
//
// The package has no non-test code and speaks to plinth only over the wire.
// -election.rounds repeats the elector faults (make test runs one round).
// ELECTION_TARGET_BIN=path runs the same test against another server that
// takes etcd's flags, such as the reference etcd bench builds: the library
// must work against both (go -C bench run ./cmd/benchrun builds bench/out/etcd).
package election
