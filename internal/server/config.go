package server

import (
	"crypto/sha256"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// Config is a member's configuration, with etcd's meanings.
type Config struct {
	Name                string
	DataDir             string
	ListenClientURLs    []url.URL
	AdvertiseClientURLs []url.URL
	ListenPeerURLs      []url.URL
	AdvertisePeerURLs   []url.URL
	// InitialCluster maps member names to their peer URLs.
	InitialCluster      map[string][]url.URL
	InitialClusterState string // "new" or "existing"
	InitialClusterToken string
	// Join, when set, is the client URL of a member of a running cluster
	// that this member, with an empty data dir, joins: added as a learner,
	// then promoted once it caught up. The initial cluster flags are then
	// unused.
	Join              string
	MaxRequestBytes   int
	HeartbeatInterval time.Duration
	ElectionTimeout   time.Duration
	// SnapshotCount is how many applied entries the Raft log keeps.
	SnapshotCount uint64
	// AutoCompaction is the compaction the leader proposes by itself.
	AutoCompaction AutoCompaction
	// CorruptCheck is when members compare their hashes.
	CorruptCheck CorruptCheck
	// QuotaBackendBytes is the database size past which writes are
	// refused and a NOSPACE alarm raised; 0 means
	// DefaultQuotaBackendBytes.
	QuotaBackendBytes int64
	// WatchProgressNotifyInterval is the period of progress notifications
	// to watchers that asked for them (0: etcd's 10 minutes).
	WatchProgressNotifyInterval time.Duration
	// ListenMetricsURLs serve HTTP diagnostics (/metrics, /health, and
	// /debug/pprof/ when EnablePprof is set), as the client URLs do.
	ListenMetricsURLs []url.URL
	EnablePprof       bool
	// WithoutReadLease makes the leader confirm its leadership with a
	// quorum for every linearizable read, as etcd does, instead of
	// answering from a read lease (raftnode.Config.ReadLease).
	WithoutReadLease bool
	Logger           *slog.Logger
	// PeerBlocked injects network faults for tests: messages between two
	// members it reports blocked are dropped (see transport.Config).
	PeerBlocked func(from, to uint64) bool
	// FS holds the member's data dir: nil for the operating system's file
	// system. Tests give a file system that loses what was not synced
	// (power loss) or fails operations (disk faults).
	FS vfs.FS
	// withoutRenewalService leaves the batched renewal service out, as a
	// plinth from before it: tests check that followers fall back to
	// etcd's keep-alive stream to such a leader.
	withoutRenewalService bool
}

// ParseURLs parses a comma-separated list of URLs as etcd's flags take them.
func ParseURLs(s string) ([]url.URL, error) {
	var out []url.URL
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		u, err := url.Parse(part)
		if err != nil {
			return nil, fmt.Errorf("invalid URL %q: %w", part, err)
		}
		if u.Scheme != "http" && u.Scheme != "https" {
			return nil, fmt.Errorf("invalid URL %q: scheme must be http or https", part)
		}
		if u.Host == "" || u.Port() == "" {
			return nil, fmt.Errorf("invalid URL %q: want scheme://host:port", part)
		}
		if u.Path != "" && u.Path != "/" {
			return nil, fmt.Errorf("invalid URL %q: must not have a path", part)
		}
		out = append(out, *u)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no URL in %q", s)
	}
	return out, nil
}

// ParseInitialCluster parses "name=url,name=url".
func ParseInitialCluster(s string) (map[string][]url.URL, error) {
	out := map[string][]url.URL{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		name, raw, ok := strings.Cut(part, "=")
		if !ok || name == "" {
			return nil, fmt.Errorf("invalid initial cluster entry %q: want name=url", part)
		}
		urls, err := ParseURLs(raw)
		if err != nil {
			return nil, fmt.Errorf("initial cluster member %s: %w", name, err)
		}
		out[name] = append(out[name], urls...)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("initial cluster %q names no member", s)
	}
	return out, nil
}

// Validate checks that the configuration describes a member this build can run.
func (c *Config) Validate() error {
	if c.Name == "" {
		return fmt.Errorf("--name must not be empty")
	}
	if c.DataDir == "" {
		return fmt.Errorf("--data-dir must not be empty")
	}
	for _, u := range append(append([]url.URL{}, c.ListenClientURLs...), c.ListenPeerURLs...) {
		if u.Scheme == "https" {
			return fmt.Errorf("%s: TLS is not supported yet; use http", u.String())
		}
	}
	if c.InitialClusterState != "new" && c.InitialClusterState != "existing" {
		return fmt.Errorf("--initial-cluster-state is %q, want new or existing", c.InitialClusterState)
	}
	if err := c.validateInitialCluster(); err != nil {
		return err
	}
	if c.MaxRequestBytes <= 0 {
		return fmt.Errorf("--max-request-bytes must be positive")
	}
	if c.HeartbeatInterval <= 0 || c.ElectionTimeout < 5*c.HeartbeatInterval {
		return fmt.Errorf("--election-timeout (%v) must be at least 5 times --heartbeat-interval (%v)", c.ElectionTimeout, c.HeartbeatInterval)
	}
	return nil
}

// validateInitialCluster checks --initial-cluster against this member's
// flags. A member that joins with --join does not use it.
func (c *Config) validateInitialCluster() error {
	if c.Join != "" {
		return nil
	}
	self, ok := c.InitialCluster[c.Name]
	if !ok {
		return fmt.Errorf("--initial-cluster has no member named %q (this member's --name)", c.Name)
	}
	if !sameURLs(self, c.AdvertisePeerURLs) {
		return fmt.Errorf("--initial-cluster has %s=%s but --initial-advertise-peer-urls is %s",
			c.Name, joinURLs(self), joinURLs(c.AdvertisePeerURLs))
	}
	seen := map[string]string{}
	for name, urls := range c.InitialCluster {
		for _, u := range urls {
			if other, dup := seen[u.String()]; dup && other != name {
				return fmt.Errorf("--initial-cluster gives peer URL %s to both %s and %s", u.String(), other, name)
			}
			seen[u.String()] = name
		}
	}
	return nil
}

func sameURLs(a, b []url.URL) bool {
	as, bs := urlStrings(a), urlStrings(b)
	slices.Sort(as)
	slices.Sort(bs)
	return slices.Equal(as, bs)
}

func urlStrings(us []url.URL) []string {
	out := make([]string, len(us))
	for i, u := range us {
		out[i] = u.String()
	}
	return out
}

func joinURLs(us []url.URL) string { return strings.Join(urlStrings(us), ",") }

// memberID derives a member's ID from its peer URLs and the cluster token, so
// the same command line always names the same member.
func memberID(peerURLs []url.URL, token string) uint64 {
	us := urlStrings(peerURLs)
	slices.Sort(us)
	sum := sha256.Sum256([]byte(strings.Join(us, ",") + "\x00" + token))
	return binary.BigEndian.Uint64(sum[:8])
}

// clusterID derives the cluster's ID from its initial members.
func clusterID(members []uint64, token string) uint64 {
	ids := slices.Clone(members)
	slices.Sort(ids)
	h := sha256.New()
	for _, id := range ids {
		_ = binary.Write(h, binary.BigEndian, id)
	}
	h.Write([]byte(token))
	return binary.BigEndian.Uint64(h.Sum(nil)[:8])
}
