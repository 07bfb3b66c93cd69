package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/client/v3/kubernetes"
	"go.uber.org/zap"
	"google.golang.org/grpc/grpclog"

	"k8s.io/apimachinery/pkg/api/apitesting"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/runtime/serializer/protobuf"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/apiserver/pkg/apis/example"
	examplev1 "k8s.io/apiserver/pkg/apis/example/v1"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/etcd3"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	"k8s.io/utils/clock"
)

var (
	scheme = runtime.NewScheme()
	codecs = serializer.NewCodecFactory(scheme)
	// jsonCodec is what Kubernetes' etcd3 tests store objects with;
	// protoCodec is what its cacher tests use.
	jsonCodec  runtime.Codec
	protoCodec runtime.Codec
)

func init() {
	metav1.AddToGroupVersion(scheme, metav1.SchemeGroupVersion)
	utilruntime.Must(example.AddToScheme(scheme))
	utilruntime.Must(examplev1.AddToScheme(scheme))
	jsonCodec = apitesting.TestCodec(codecs, examplev1.SchemeGroupVersion)
	pb := protobuf.NewSerializer(scheme, scheme)
	protoCodec = codecs.CodecForVersions(pb, pb, schema.GroupVersions{examplev1.SchemeGroupVersion}, nil)
	grpclog.SetLoggerV2(grpclog.NewLoggerV2(io.Discard, io.Discard, os.Stderr))
}

func newPod() runtime.Object     { return &example.Pod{} }
func newPodList() runtime.Object { return &example.PodList{} }

// storedPrefix is what the etcd3 tests' transformer puts before every
// stored value (the storage invariants check it is there).
const storedPrefix = "test!"

var prefixSeq atomic.Int64

// newPrefix returns a key prefix no other store of this run uses, so that
// tests sharing the cluster see only their own objects.
func newPrefix() string {
	return fmt.Sprintf("/kube-%d-%d", os.Getpid(), prefixSeq.Add(1))
}

// newClient connects Kubernetes' etcd client to every member of the
// cluster, with the request recorders that Kubernetes' own test server
// installs (some conformance functions count the reads).
func newClient(t testing.TB, endpoints []string) *kubernetes.Client {
	t.Helper()
	client, err := kubernetes.New(clientv3.Config{
		Endpoints:   endpoints,
		DialTimeout: 10 * time.Second,
		Logger:      zap.NewNop(),
	})
	if err != nil {
		t.Fatalf("kube: etcd client: %v", err)
	}
	t.Cleanup(func() { client.Close() })
	recorder := storagetesting.NewKubernetesRecorder(client.Kubernetes)
	client.KV = storagetesting.NewKVRecorder(client.KV, recorder)
	client.Kubernetes = recorder
	return client
}

// storeOptions are the knobs of newStore; the zero value is the etcd3
// tests' defaults.
type storeOptions struct {
	codec       runtime.Codec
	transformer value.Transformer
	// ownCluster gives the test a cluster of its own: it compacts, or it
	// watches from the cluster's first revisions, which a shared cluster
	// has compacted or a cache started on it has never seen.
	ownCluster bool
	// progressNotify gives the test a cluster of its own that sends
	// progress notifications every progressInterval.
	progressNotify bool
	// prefix replaces the store's own key prefix (newPrefix); only for a
	// test with a cluster of its own.
	prefix string
}

// testStore is the etcd3 store of k8s.io/apiserver on the plinth cluster,
// with the hooks some conformance functions need: its transformer can be
// swapped at run time, as Kubernetes' tests do by reaching into the store.
type testStore struct {
	storage.Interface
	client      *kubernetes.Client
	prefix      string
	transformer *swappableTransformer
}

func newStore(t testing.TB, opts storeOptions) (context.Context, *testStore) {
	t.Helper()
	if opts.codec == nil {
		opts.codec = jsonCodec
	}
	if opts.transformer == nil {
		opts.transformer = storagetesting.NewPrefixTransformer([]byte(storedPrefix), false)
	}
	addrs := endpoints
	switch {
	case opts.progressNotify:
		addrs = newCluster(t, progressInterval)
	case opts.ownCluster:
		addrs = newCluster(t, 0)
	}
	client := newClient(t, addrs)
	versioner := storage.APIObjectVersioner{}
	compactor := etcd3.NewCompactor(client.Client, 0, clock.RealClock{}, nil)
	t.Cleanup(compactor.Stop)
	prefix := newPrefix()
	if opts.prefix != "" {
		prefix = opts.prefix
	}
	transformer := &swappableTransformer{}
	transformer.set(opts.transformer)
	leaseConfig := etcd3.NewDefaultLeaseManagerConfig()
	leaseConfig.ReuseDurationSeconds = 1
	s, err := etcd3.New(client, compactor, opts.codec, newPod, newPodList, prefix, "/pods/",
		schema.GroupResource{Resource: "pods"}, transformer, leaseConfig,
		etcd3.NewDefaultDecoder(opts.codec, versioner), versioner)
	if err != nil {
		t.Fatalf("kube: etcd3 store: %v", err)
	}
	t.Cleanup(s.Close)
	return context.Background(), &testStore{Interface: s, client: client, prefix: prefix, transformer: transformer}
}

// UpdatePrefixTransformer lets the conformance functions replace the
// store's prefix transformer (storagetesting.InterfaceWithPrefixTransformer).
func (s *testStore) UpdatePrefixTransformer(modifier storagetesting.PrefixTransformerModifier) func() {
	return s.UpdateTransformer(func(current value.Transformer) value.Transformer {
		prefix, ok := current.(*storagetesting.PrefixTransformer)
		if !ok {
			panic(fmt.Sprintf("kube: the store's transformer is a %T, not a prefix transformer", current))
		}
		copied := *prefix
		return modifier(&copied)
	})
}

// UpdateTransformer lets the conformance functions replace the store's
// transformer (storagetesting.InterfaceWithTransformerOverride).
func (s *testStore) UpdateTransformer(modifier storagetesting.TransformerModifier) func() {
	orig := s.transformer.get()
	s.transformer.set(modifier(orig))
	return func() { s.transformer.set(orig) }
}

// checkStorageInvariants reads an object's key straight from plinth and
// checks how the store wrote it: behind the transformer's prefix, without
// resource version or self link.
func (s *testStore) checkStorageInvariants(codec runtime.Codec) storagetesting.KeyValidation {
	return func(ctx context.Context, t *testing.T, key string) {
		resp, err := s.client.KV.Get(ctx, s.prefix+key)
		if err != nil {
			t.Fatalf("Get of %s: %v", s.prefix+key, err)
		}
		if len(resp.Kvs) == 0 {
			t.Fatalf("no value at %s", s.prefix+key)
		}
		data := resp.Kvs[0].Value
		if len(data) < len(storedPrefix) || string(data[:len(storedPrefix)]) != storedPrefix {
			t.Fatalf("stored value %q lacks the transformer's prefix %q", data, storedPrefix)
		}
		decoded, err := runtime.Decode(codec, data[len(storedPrefix):])
		if err != nil {
			t.Fatalf("decoding the stored object: %v\n%s", err, data)
		}
		pod := decoded.(*example.Pod)
		if pod.ResourceVersion != "" {
			t.Errorf("stored object has resource version %q, want none", pod.ResourceVersion)
		}
		if pod.SelfLink != "" {
			t.Errorf("stored object has self link %q, want none", pod.SelfLink)
		}
	}
}

// swappableTransformer delegates to a transformer that tests may replace
// while the store runs.
type swappableTransformer struct {
	mu      sync.RWMutex
	current value.Transformer
}

func (s *swappableTransformer) get() value.Transformer {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.current
}

func (s *swappableTransformer) set(t value.Transformer) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.current = t
}

func (s *swappableTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	return s.get().TransformFromStorage(ctx, data, dataCtx)
}

func (s *swappableTransformer) TransformToStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, error) {
	return s.get().TransformToStorage(ctx, data, dataCtx)
}

// increaseRV writes a key outside every store's prefix, moving the
// cluster's revision on, and returns the new revision.
func increaseRV(client *clientv3.Client) storagetesting.IncreaseRVFunc {
	return func(ctx context.Context, t *testing.T) int64 {
		resp, err := client.KV.Put(ctx, "increaseRV", "ok")
		if err != nil {
			t.Fatalf("Put increaseRV: %v", err)
		}
		return resp.Header.Revision
	}
}

// compaction compacts plinth at a resource version through the store's own
// compaction routine (etcd3.Compact: the transaction on the compact key,
// then Compact), then waits until the store has observed it, as Kubernetes'
// tests do.
func compaction(s storage.Interface, client *clientv3.Client) storagetesting.Compaction {
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		// Compact's transaction expects the compact key's version: the
		// first try learns it (Kubernetes' test retries only on errors,
		// having a fresh etcd for each test).
		var version, compacted int64
		for try := 0; compacted != int64(rv); try++ {
			if try == 3 {
				t.Fatalf("compacting at %d: the compact key moved under us three times", rv)
			}
			version, _, compacted, err = etcd3.Compact(ctx, client, version, int64(rv))
			if err != nil {
				t.Fatalf("compacting at %d: %v", rv, err)
			}
		}
		// The store learns of compactions by watching the compact key only
		// with ListFromCacheSnapshot on.
		if !utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			return
		}
		deadline := time.Now().Add(30 * time.Second)
		for s.CompactRevision() < int64(rv) {
			if time.Now().After(deadline) {
				t.Fatalf("the store observed compaction at %d, not %d, after 30s", s.CompactRevision(), rv)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
}

var errSynthetic = errors.New("synthetic error")

// failingTransformer fails reads while set failing.
type failingTransformer struct {
	value.Transformer
	fail atomic.Bool
}

func (f *failingTransformer) setFailing(v bool) { f.fail.Store(v) }

func (f *failingTransformer) TransformFromStorage(ctx context.Context, data []byte, dataCtx value.Context) ([]byte, bool, error) {
	if f.fail.Load() {
		return nil, false, errSynthetic
	}
	return f.Transformer.TransformFromStorage(ctx, data, dataCtx)
}

// failingCodec fails decoding while set failing.
type failingCodec struct {
	runtime.Codec
	fail atomic.Bool
}

func (f *failingCodec) setFailing(v bool) { f.fail.Store(v) }

func (f *failingCodec) Decode(data []byte, defaults *schema.GroupVersionKind, into runtime.Object) (runtime.Object, *schema.GroupVersionKind, error) {
	if f.fail.Load() {
		return nil, nil, errSynthetic
	}
	return f.Codec.Decode(data, defaults, into)
}
