// Package election elects one leader among the replicas of an application,
// with the etcd v3 API (leases, txns, watch) through
// go.etcd.io/etcd/client/v3, so it works against plinth and etcd alike. It
// follows Kubernetes client-go's leaderelection: a Config of lease duration,
// renew deadline and retry period, callbacks when this replica starts and
// stops leading and when the leader changes, a health check and a metric; and
// it adds fencing tokens, so that a deposed leader's late writes are refused.
//
// # How it elects
//
// Each candidate grants a lease of Config.LeaseDuration (rounded up to whole
// seconds, as etcd leases count; a server may raise it to its minimum TTL)
// and puts the key Prefix + "/" + lease ID in hex, with its Identity as the
// value, attached to the lease. The candidate whose key has the lowest create
// revision leads; the others watch the prefix and take over when the keys
// before theirs are gone. This is the layout of clientv3/concurrency's
// Election, so `etcdctl elect -l PREFIX` shows the leader's identity.
//
// A candidate keeps its lease alive with one keep-alive every RetryPeriod.
// When no keep-alive has succeeded for RenewDeadline (counted from when the
// last successful one was sent), or the server says the lease is gone, or the
// candidate's key is deleted, the leader steps down: it cancels the context
// of OnStartedLeading, calls OnStoppedLeading, revokes its lease (if it still
// can, so that the next candidate takes over at once and the old token is
// refused at once), waits for OnStartedLeading to return, and campaigns again.
// RenewDeadline is shorter than LeaseDuration so that a leader cut off from
// the cluster stops acting before its lease can expire on the server and
// another replica can start; the difference is the margin for clock rates and
// scheduling.
//
// When the context given to Run is cancelled, a leader cancels the context of
// OnStartedLeading and keeps renewing its lease until OnStartedLeading
// returns; then it calls OnStoppedLeading and, with Config.ReleaseOnCancel,
// revokes its lease, which deletes its key, so that another replica takes
// over at once instead of after the lease expires. A candidate that is not
// leading always withdraws (revokes its lease) when cancelled.
//
// # Fencing
//
// Each term of leadership carries a token: the create revision of the
// leader's key (Leadership.Token). Revisions only grow, and the key exists
// exactly as long as its lease, so "the leader's key still has create
// revision T" holds from the moment term T began until the term ends, and
// never again. Leadership.Txn, Put and Delete add that comparison to the
// write; the server evaluates it atomically with the write, so a write made
// under a term that has ended — by a leader that was paused, partitioned or
// slow to notice — is refused with ErrFenced, however late it arrives.
// Leadership.Guard gives the comparison for txns built by hand.
//
// What fencing does not cover: only writes to the same plinth or etcd cluster
// that go through the guarded txn are fenced. Side effects elsewhere (calls
// to other services, files, a different cluster) are not; for those, pass the
// token along and let the other side refuse tokens lower than the highest it
// has seen. Reads are not fenced either: a deposed leader can still read. And
// fencing does not stop the deposed leader's code from running: it only makes
// its writes fail.
//
// # What a leader may assume
//
// Between OnStartedLeading and the cancellation of its context, no other
// replica's term has begun, as long as the clocks of this process and the
// server advance at about the same rate and nobody deletes the leader's key
// or revokes its lease by hand (the leader learns of that through a watch,
// a moment late). A process that is paused (SIGSTOP,
// a long GC or VM pause) longer than the lease can wake up believing it still
// leads: its context is cancelled at the next failed or late renewal, and
// until then only fenced writes are safe.
//
// # Health and metrics
//
// Elector.Check returns an error while this replica has lost its leadership
// but OnStartedLeading has not yet returned (the leader work is still running
// though another replica may have started), and while a leader's lease has
// not been renewed for longer than LeaseDuration (the renew loop is stuck).
// Serve it on a liveness or readiness probe (see examples/controller). With
// Config.Registerer, the elector registers the gauge
// plinth_election_is_leader{name=Config.Name}: 1 while this process leads.
package election
