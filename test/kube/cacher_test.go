package kube

import (
	"context"
	"fmt"
	"strconv"
	"testing"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/apiserver/pkg/apis/example"
	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	"k8s.io/apiserver/pkg/storage/cacher"
	etcdfeature "k8s.io/apiserver/pkg/storage/feature"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	"k8s.io/apiserver/pkg/storage/value/encrypt/identity"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	clientfeatures "k8s.io/client-go/features"
	"k8s.io/client-go/tools/cache"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
	"k8s.io/utils/clock"
)

// The watch cache's conformance, with the settings of
// k8s.io/apiserver/pkg/storage/cacher's cacher_test.go: the cacher lists and
// watches plinth through an etcd3 store and serves reads from memory; a
// consistent read (resource version "") first asks plinth for the current
// revision and waits until the cache has seen it, by a progress request on
// its watch stream (RequestProgress) when no event moves it there.
//
// Left out, as Kubernetes' own cacher tests leave them out or reach into
// the cacher's internals to run them: WatchFromZero (it trims the cache's
// history by hand before compacting), WatchError, WatchContextCancel,
// ListInconsistentContinuation, ListResourceVersionMatch, GuaranteedUpdate,
// GuaranteedUpdateChecksStoredData, TransformationFailure and the delete
// tests with decode errors.

// registryPrefix is the key prefix of Kubernetes' cacher tests.
const registryPrefix = "/registry"

// cacherOptions are the knobs of newCacher; the zero value is the cacher
// tests' defaults.
type cacherOptions struct {
	clusterScoped bool
	// ownCluster gives the test a cluster of its own: it compacts, or it
	// watches from the cluster's first revisions, which a shared cluster
	// has compacted or a cache started on it has never seen.
	ownCluster bool
	// indexed adds the pod indexes that Kubernetes registers for pods
	// (spec.nodeName, and metadata.namespace in the cache).
	indexed bool
}

// testCacher is the watch cache in front of the etcd3 store on plinth.
type testCacher struct {
	*cacher.CacheDelegator
	store *testStore
}

func newCacher(t *testing.T, opts cacherOptions) (context.Context, *testCacher) {
	t.Helper()
	so := storeOptions{codec: protoCodec, transformer: identity.NewEncryptCheckTransformer(), ownCluster: opts.ownCluster}
	if opts.ownCluster {
		// Alone on its cluster, the store takes the prefix of Kubernetes'
		// cacher tests, which RunTestList expects in the list requests it
		// records.
		so.prefix = registryPrefix
	}
	ctx, s := newStore(t, so)
	// One injected list error makes the cacher relist, as in Kubernetes'
	// tests (unless the reflector lists by watching).
	listErrors := 1
	if clientfeatures.FeatureGates().Enabled(clientfeatures.WatchListClient) {
		listErrors = 0
	}
	wrapped := &storagetesting.StorageInjectingListErrors{Interface: s, Errors: listErrors}
	const resourcePrefix = "/pods/"
	keyFunc := func(obj runtime.Object) (string, error) { return storage.NamespaceKeyFunc(resourcePrefix, obj) }
	if opts.clusterScoped {
		keyFunc = func(obj runtime.Object) (string, error) { return storage.NoNamespaceKeyFunc(resourcePrefix, obj) }
	}
	var indexerFuncs storage.IndexerFuncs
	var indexers cache.Indexers
	if opts.indexed {
		indexerFuncs = storage.IndexerFuncs{"spec.nodeName": func(obj runtime.Object) string {
			if pod, ok := obj.(*example.Pod); ok {
				return pod.Spec.NodeName
			}
			return ""
		}}
		indexers = cache.Indexers{
			"f:spec.nodeName": func(obj any) ([]string, error) {
				return []string{obj.(*example.Pod).Spec.NodeName}, nil
			},
			"f:metadata.namespace": func(obj any) ([]string, error) {
				return []string{obj.(*example.Pod).Namespace}, nil
			},
		}
	}
	c, err := cacher.NewCacherFromConfig(cacher.Config{
		Storage:             wrapped,
		Versioner:           storage.APIObjectVersioner{},
		GroupResource:       schema.GroupResource{Resource: "pods"},
		EventsHistoryWindow: cacher.DefaultEventFreshDuration,
		ResourcePrefix:      resourcePrefix,
		KeyFunc:             keyFunc,
		GetAttrsFunc:        podAttrs,
		NewFunc:             newPod,
		NewListFunc:         newPodList,
		IndexerFuncs:        indexerFuncs,
		Indexers:            &indexers,
		Codec:               protoCodec,
		Clock:               clock.RealClock{},
	})
	if err != nil {
		t.Fatalf("kube: cacher: %v", err)
	}
	// Tests expect reads not to fail while the cache initializes: wait for
	// the injected error to be consumed and the cache to be ready.
	if err := wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, time.Minute, true, func(context.Context) (bool, error) {
		return wrapped.ErrorsConsumed()
	}); err != nil {
		c.Stop()
		t.Fatalf("kube: the cacher did not relist: %v", err)
	}
	if err := c.Wait(ctx); err != nil {
		c.Stop()
		t.Fatalf("kube: the cacher did not become ready: %v", err)
	}
	delegator := cacher.NewCacheDelegator(c, wrapped)
	t.Cleanup(func() {
		delegator.Stop()
		c.Stop()
	})
	return ctx, &testCacher{CacheDelegator: delegator, store: s}
}

// podAttrs returns the labels and selectable fields of a pod, as the pod
// registry does.
func podAttrs(obj runtime.Object) (labels.Set, fields.Set, error) {
	pod, ok := obj.(*example.Pod)
	if !ok {
		return nil, nil, fmt.Errorf("not a pod: %T", obj)
	}
	return labels.Set(pod.Labels), fields.Set{
		"spec.nodeName":      pod.Spec.NodeName,
		"spec.restartPolicy": string(pod.Spec.RestartPolicy),
		"status.phase":       string(pod.Status.Phase),
		"metadata.name":      pod.Name,
		"metadata.namespace": pod.Namespace,
	}, nil
}

// createWrapper makes Create return only once the cache serves the new
// object, as the watch semantics tests expect.
type createWrapper struct {
	*testCacher
}

func (c createWrapper) Create(ctx context.Context, key string, obj, out runtime.Object, ttl uint64) error {
	if err := c.testCacher.Create(ctx, key, obj, out, ttl); err != nil {
		return err
	}
	return wait.PollUntilContextTimeout(ctx, 100*time.Millisecond, wait.ForeverTestTimeout, true, func(ctx context.Context) (bool, error) {
		current := &example.Pod{}
		err := c.testCacher.Get(ctx, key, storage.GetOptions{ResourceVersion: "0"}, current)
		if storage.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		return apiequality.Semantic.DeepEqual(current, out), nil
	})
}

// noCallsValidation: the cacher passes paginated lists to the store, whose
// calls the store tests count.
func noCallsValidation(*testing.T, uint64, uint64) {}

func noKeyValidation(context.Context, *testing.T, string) {}

func TestCacherCreateGetDelete(t *testing.T) {
	t.Run("Create", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestCreate(ctx, t, c, noKeyValidation)
	})
	t.Run("CreateWithTTL", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestCreateWithTTL(ctx, t, c)
	})
	t.Run("CreateWithKeyExist", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestCreateWithKeyExist(ctx, t, c)
	})
	t.Run("Get", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestGet(ctx, t, c)
	})
	t.Run("UnconditionalDelete", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestUnconditionalDelete(ctx, t, c)
	})
	t.Run("ConditionalDelete", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestConditionalDelete(ctx, t, c)
	})
	t.Run("DeleteWithSuggestion", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestDeleteWithSuggestion(ctx, t, c)
	})
	t.Run("DeleteWithSuggestionAndConflict", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, c)
	})
	t.Run("DeleteWithSuggestionOfDeletedObject", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, c)
	})
	t.Run("ValidateDeletionWithSuggestion", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, c)
	})
	t.Run("ValidateDeletionWithOnlySuggestionValid", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, c)
	})
	t.Run("DeleteWithConflict", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestDeleteWithConflict(ctx, t, c)
	})
	t.Run("PreconditionalDeleteWithSuggestion", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, c)
	})
	t.Run("PreconditionalDeleteWithOnlySuggestionPass", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, c)
	})
}

func TestCacherList(t *testing.T) {
	for _, snapshot := range []bool{true, false} {
		t.Run(fmt.Sprintf("ListFromCacheSnapshot=%v", snapshot), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, snapshot)
			t.Run("List", func(t *testing.T) {
				ctx, c := newCacher(t, cacherOptions{ownCluster: true})
				storagetesting.RunTestList(ctx, t, c, c.compaction(), true, c.store.client.Kubernetes.(*storagetesting.KubernetesRecorder))
			})
			// Consistent reads from the cache: the heart of what the API
			// server asks of plinth's watch (RequestProgress).
			t.Run("ConsistentList", func(t *testing.T) {
				// No silent fallback to plinth if the cache does not catch up.
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConsistentListFromCacheSkipTimeoutFallback, true)
				ctx, c := newCacher(t, cacherOptions{})
				storagetesting.RunTestConsistentList(ctx, t, c, increaseRV(c.store.client.Client), true, true, snapshot)
			})
			t.Run("GetListNonRecursive", func(t *testing.T) {
				ctx, c := newCacher(t, cacherOptions{})
				storagetesting.RunTestGetListNonRecursive(ctx, t, increaseRV(c.store.client.Client), c)
			})
		})
	}
	t.Run("CompactRevision", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, true)
		ctx, c := newCacher(t, cacherOptions{ownCluster: true})
		storagetesting.RunTestCompactRevision(ctx, t, c, increaseRV(c.store.client.Client), c.compaction())
	})
	t.Run("Paging", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestListPaging(ctx, t, c)
	})
	t.Run("GetListRecursivePrefix", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestGetListRecursivePrefix(ctx, t, c)
	})
	t.Run("Continuation", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestListContinuation(ctx, t, c, noCallsValidation)
	})
	t.Run("PaginationRareObject", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestListPaginationRareObject(ctx, t, c, noCallsValidation)
	})
	t.Run("ContinuationWithFilter", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestListContinuationWithFilter(ctx, t, c, noCallsValidation)
	})
	t.Run("NamespaceScoped", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{indexed: true})
		storagetesting.RunTestNamespaceScopedList(ctx, t, c)
	})
	t.Run("KeySchema", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestKeySchema(ctx, t, c)
	})
	t.Run("Stats", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.SizeBasedListCostEstimate, false)
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestStats(ctx, t, c, protoCodec, identity.NewEncryptCheckTransformer(), false)
	})
}

func TestCacherGuaranteedUpdate(t *testing.T) {
	t.Run("WithTTL", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, c)
	})
	t.Run("WithConflict", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, c)
	})
	t.Run("WithSuggestionAndConflict", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, c)
	})
}

func TestCacherWatch(t *testing.T) {
	t.Run("Watch", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestWatch(ctx, t, c)
	})
	t.Run("DeleteTriggerWatch", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestDeleteTriggerWatch(ctx, t, c)
	})
	t.Run("WatchFromNonZero", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestWatchFromNonZero(ctx, t, c)
	})
	t.Run("DelayedWatchDelivery", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestDelayedWatchDelivery(ctx, t, c)
	})
	t.Run("WatcherTimeout", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestWatcherTimeout(ctx, t, c)
	})
	t.Run("WatchDeleteEventObjectHaveLatestRV", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, c)
	})
	t.Run("WatchInitializationSignal", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestWatchInitializationSignal(ctx, t, c)
	})
	t.Run("ClusterScopedWatch", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{clusterScoped: true, indexed: true})
		storagetesting.RunTestClusterScopedWatch(ctx, t, c)
	})
	t.Run("NamespaceScopedWatch", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{indexed: true})
		storagetesting.RunTestNamespaceScopedWatch(ctx, t, c)
	})
	t.Run("WatchDispatchBookmarkEvents", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, c, true)
	})
	t.Run("WatchBookmarksWithCorrectResourceVersion", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunTestOptionalWatchBookmarksWithCorrectResourceVersion(ctx, t, c)
	})
	t.Run("SendInitialEventsBackwardCompatibility", func(t *testing.T) {
		ctx, c := newCacher(t, cacherOptions{})
		storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, c)
	})
	t.Run("WatchSemantics", func(t *testing.T) {
		// It watches from resource version 1, which must be in the cache.
		_, c := newCacher(t, cacherOptions{ownCluster: true})
		storagetesting.RunWatchSemantics(context.Background(), t, createWrapper{c})
	})
	t.Run("WatchSemanticInitialEventsExtended", func(t *testing.T) {
		_, c := newCacher(t, cacherOptions{})
		storagetesting.RunWatchSemanticInitialEventsExtended(context.Background(), t, createWrapper{c})
	})
	t.Run("WatchListMatchSingle", func(t *testing.T) {
		_, c := newCacher(t, cacherOptions{})
		storagetesting.RunWatchListMatchSingle(context.Background(), t, createWrapper{c})
	})
}

// compaction compacts plinth through the store and waits until the cacher
// has taken the compaction in: its compactor polls the store's compact
// revision (every 15s, which Kubernetes' test shortcuts by calling the
// compactor directly, an internal we cannot reach).
func (c *testCacher) compaction() storagetesting.Compaction {
	compact := compaction(c.store, c.store.client.Client)
	return func(ctx context.Context, t *testing.T, resourceVersion string) {
		compact(ctx, t, resourceVersion)
		if !utilfeature.DefaultFeatureGate.Enabled(features.ListFromCacheSnapshot) {
			return
		}
		rv, err := storage.APIObjectVersioner{}.ParseResourceVersion(resourceVersion)
		if err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(time.Minute)
		for c.CompactRevision() < int64(rv) {
			if time.Now().After(deadline) {
				t.Fatalf("the cacher observed compaction at %d, not %d, after a minute", c.CompactRevision(), rv)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// TestCacherConsistentReadFromCache checks the path the API server takes for
// every list without a resource version: it reads plinth's current
// revision, then waits until its cache has caught up, which, when the last
// writes are outside the cached prefix, only a progress notification asked
// for by RequestProgress can bring about. Kubernetes falls back to reading
// plinth after a timeout, which would hide a progress request left
// unanswered: the fallback is turned off, so the read fails instead.
func TestCacherConsistentReadFromCache(t *testing.T) {
	featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConsistentListFromCacheSkipTimeoutFallback, true)
	ctx, c := newCacher(t, cacherOptions{})
	if !etcdfeature.DefaultFeatureSupportChecker.Supports(storage.RequestWatchProgress) {
		t.Fatal("the API server does not take plinth for an etcd that answers progress requests (it judges by Status's version)")
	}
	pod := &example.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "pod"}}
	if err := c.Create(ctx, "/pods/ns/pod", pod, &example.Pod{}, 0); err != nil {
		t.Fatalf("Create: %v", err)
	}
	recorder := c.store.client.Kubernetes.(*storagetesting.KubernetesRecorder)
	etcdListsBefore := len(recorder.ListRequestForKey(c.store.prefix + "/pods/"))
	bump := increaseRV(c.store.client.Client)
	for i := 0; i < 5; i++ {
		rev := bump(ctx, t)
		list := &example.PodList{}
		start := time.Now()
		err := c.GetList(ctx, "/pods/", storage.ListOptions{Predicate: storage.Everything, Recursive: true}, list)
		if err != nil {
			t.Fatalf("consistent list %d after a write at revision %d: %v", i, rev, err)
		}
		rv, err := strconv.ParseInt(list.ResourceVersion, 10, 64)
		if err != nil || rv < rev {
			t.Fatalf("consistent list %d: resource version %q, want at least %d", i, list.ResourceVersion, rev)
		}
		if len(list.Items) != 1 {
			t.Fatalf("consistent list %d: %d pods, want 1", i, len(list.Items))
		}
		t.Logf("consistent list %d at revision %d served in %v", i, rv, time.Since(start))
	}
	if lists := recorder.ListRequestForKey(c.store.prefix + "/pods/")[etcdListsBefore:]; len(lists) != 0 {
		t.Errorf("consistent lists were served by plinth, not the cache: %v", lists)
	}
}
