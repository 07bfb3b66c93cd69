// Package cluster holds plinth's multi-member tests: three members run as
// child processes and bootstrap a cluster; the tests write and read through
// every member, kill -9 the leader, pause members (SIGSTOP) for longer than
// the election timeout and restart them, partition them (in network
// namespaces, as root), take the quorum away, and change the membership, and
// prove from the clients' answers that the cluster elects a new leader and
// keeps taking writes, that a restarted member catches up, that every
// acknowledged write is readable from every member, and (with porcupine)
// that the history of puts, linearizable reads and compare-and-set txns is
// linearizable; that holders of a lock (the Lock service and the
// client's Mutex recipe) writing under their fencing tokens never overlap
// while the leader is killed; that a kept-alive lease outlives leader kills
// and pauses while leases nobody keeps alive expire on time, their remaining
// TTL never restarting on a new leader (issue 17); and meanwhile that
// watchers through every member, resumed from member to member, get the
// committed history of their ranges whole, in order, a revision at a time,
// and never below a progress notification (internal/watchcheck).
//
// The package has no non-test code, and it must never import the server's
// packages: it speaks to plinth only over the wire, as a client would (the
// generated gRPC client of the Lock service, internal/lockelect/v3lockpb, is
// wire protocol only), and runs it through internal/testmember.
//
// Flags: -cluster.duration sets how long the fault tests run (make
// test-faults runs it longer), -cluster.faults picks the faults it makes,
// -cluster.seed fixes its random choices, and
// -cluster.break deliberately weakens the tests' own setup so that a run
// shows the checks can fail (see breakFlag).
package cluster
