// Package crash holds plinth's crash-safety tests: a plinth member runs as a
// child process under concurrent write load, is killed with SIGKILL at random
// moments, and is restarted on the same data directory, again and again.
// After every restart the tests prove, from the answers the clients were
// given, that every acknowledged write is still there at the revision it was
// acknowledged with, that no request was applied twice, that transactions are
// all or nothing, and that revisions agree with the real-time order of the
// requests. Other tests kill a member while it recovers: while it replays
// its log, while it receives and installs a Raft snapshot, and while it
// compacts; then check every acknowledged write once it finally starts.
// docs/operations.md says what each test proves and how often it kills.
//
// The package has no non-test code, and it must never import the server's
// packages: it speaks to plinth only over the wire, as a client would. The
// one plinth package it uses is internal/testmember, which runs plinth as a
// process and knows nothing of its insides.
package crash
