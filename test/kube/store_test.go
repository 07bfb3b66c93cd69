package kube

import (
	"fmt"
	"testing"

	"k8s.io/apiserver/pkg/features"
	"k8s.io/apiserver/pkg/storage"
	etcdfeature "k8s.io/apiserver/pkg/storage/feature"
	storagetesting "k8s.io/apiserver/pkg/storage/testing"
	utilfeature "k8s.io/apiserver/pkg/util/feature"
	featuregatetesting "k8s.io/component-base/featuregate/testing"
)

// The etcd3 store's conformance, in the order and with the settings of
// k8s.io/apiserver/pkg/storage/etcd3's store_test.go. Left out, as they test
// the apiserver's own code rather than what it asks of etcd:
// GetListWithErrorAggregation, GetListWithoutErrorAggregation and
// WatchWithUnsafeDelete (they need an error type internal to etcd3).

func TestStoreCreate(t *testing.T) {
	ctx, s := newStore(t, storeOptions{})
	storagetesting.RunTestCreate(ctx, t, s, s.checkStorageInvariants(jsonCodec))
}

func TestStoreCreateWithTTL(t *testing.T) {
	ctx, s := newStore(t, storeOptions{})
	storagetesting.RunTestCreateWithTTL(ctx, t, s)
}

func TestStoreCreateWithKeyExist(t *testing.T) {
	ctx, s := newStore(t, storeOptions{})
	storagetesting.RunTestCreateWithKeyExist(ctx, t, s)
}

func TestStoreGet(t *testing.T) {
	ctx, s := newStore(t, storeOptions{})
	storagetesting.RunTestGet(ctx, t, s)
}

func TestStoreDelete(t *testing.T) {
	t.Run("Unconditional", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestUnconditionalDelete(ctx, t, s)
	})
	t.Run("Conditional", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestConditionalDelete(ctx, t, s)
	})
	t.Run("WithSuggestion", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDeleteWithSuggestion(ctx, t, s)
	})
	t.Run("WithSuggestionAndConflict", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDeleteWithSuggestionAndConflict(ctx, t, s)
	})
	t.Run("WithSuggestionOfDeletedObject", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDeleteWithSuggestionOfDeletedObject(ctx, t, s)
	})
	t.Run("ValidateDeletionWithSuggestion", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestValidateDeletionWithSuggestion(ctx, t, s)
	})
	t.Run("ValidateDeletionWithOnlySuggestionValid", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestValidateDeletionWithOnlySuggestionValid(ctx, t, s)
	})
	t.Run("WithConflict", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDeleteWithConflict(ctx, t, s)
	})
	t.Run("PreconditionalWithSuggestion", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestPreconditionalDeleteWithSuggestion(ctx, t, s)
	})
	t.Run("PreconditionalWithOnlySuggestionPass", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestPreconditionalDeleteWithOnlySuggestionPass(ctx, t, s)
	})
	t.Run("WithConflictAndMissingExpectedDecodeError", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		codec := &failingCodec{Codec: jsonCodec}
		ctx, s := newStore(t, storeOptions{codec: codec})
		storagetesting.RunTestDeleteWithConflictAndMissingExpectedTransformOrDecodeError(ctx, t, s, codec.setFailing)
	})
	t.Run("WithConflictAndExpectedTransformError", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		transformer := &failingTransformer{Transformer: storagetesting.NewPrefixTransformer([]byte(storedPrefix), false)}
		ctx, s := newStore(t, storeOptions{transformer: transformer})
		storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, s, transformer.setFailing)
	})
	t.Run("WithConflictAndExpectedDecodeError", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		codec := &failingCodec{Codec: jsonCodec}
		ctx, s := newStore(t, storeOptions{codec: codec})
		storagetesting.RunTestDeleteExpectedTransformOrDecodeError(ctx, t, s, codec.setFailing)
	})
	t.Run("WithSuggestionAndMissingExpectedTransformOrDecodeError", func(t *testing.T) {
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.AllowUnsafeMalformedObjectDeletion, true)
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDeleteWithSuggestionAndMissingExpectedTransformOrDecodeError(ctx, t, s)
	})
}

func TestStoreList(t *testing.T) {
	// Both ways the store reads ranges: paginated Range, and the RangeStream
	// RPC of etcd 3.7.
	for _, rangeStream := range []bool{false, true} {
		t.Run(fmt.Sprintf("RangeStream=%v", rangeStream), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			t.Run("List", func(t *testing.T) {
				ctx, s := newStore(t, storeOptions{ownCluster: true})
				storagetesting.RunTestList(ctx, t, s, compaction(s, s.client.Client), false, s.client.Kubernetes.(*storagetesting.KubernetesRecorder))
				streamReads := s.client.KV.(*storagetesting.KVRecorder).GetStreamReadsAndReset()
				if rangeStream && streamReads == 0 {
					t.Error("no list was served by RangeStream")
				}
				// A RangeStream refused makes the store fall back to
				// paginated ranges and remember the refusal.
				if rangeStream && !etcdfeature.DefaultFeatureSupportChecker.Supports(storage.RangeStream) {
					t.Error("the store took plinth for an etcd without RangeStream")
				}
				if !rangeStream && streamReads > 0 {
					t.Errorf("%d RangeStream requests with the feature off", streamReads)
				}
			})
			t.Run("ConsistentList", func(t *testing.T) {
				ctx, s := newStore(t, storeOptions{})
				storagetesting.RunTestConsistentList(ctx, t, s, increaseRV(s.client.Client), false, true, false)
			})
		})
	}
	t.Run("Paging", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestListPaging(ctx, t, s)
	})
	t.Run("GetListNonRecursive", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGetListNonRecursive(ctx, t, increaseRV(s.client.Client), s)
	})
	t.Run("GetListRecursivePrefix", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGetListRecursivePrefix(ctx, t, s)
	})
	t.Run("KeySchema", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestKeySchema(ctx, t, s)
	})
	t.Run("CompactRevision", func(t *testing.T) {
		// The store learns of compactions made by others by watching the
		// compact key, which it does with ListFromCacheSnapshot on.
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, true)
		ctx, s := newStore(t, storeOptions{ownCluster: true})
		storagetesting.RunTestCompactRevision(ctx, t, s, increaseRV(s.client.Client), compaction(s, s.client.Client))
	})
	t.Run("Continuation", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestListContinuation(ctx, t, s, s.checkStorageCalls())
	})
	t.Run("PaginationRareObject", func(t *testing.T) {
		// As in Kubernetes: with ListFromCacheSnapshot the store also reads
		// the compact key, which the call count does not expect.
		featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ListFromCacheSnapshot, false)
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestListPaginationRareObject(ctx, t, s, s.checkStorageCalls())
	})
	t.Run("ContinuationWithFilter", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestListContinuationWithFilter(ctx, t, s, s.checkStorageCalls())
	})
	t.Run("NamespaceScoped", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestNamespaceScopedList(ctx, t, s)
	})
	t.Run("InconsistentContinuation", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{ownCluster: true})
		storagetesting.RunTestListInconsistentContinuation(ctx, t, s, compaction(s, s.client.Client))
	})
	t.Run("ResourceVersionMatch", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestListResourceVersionMatch(ctx, t, s)
	})
	t.Run("Stats", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestStats(ctx, t, s, jsonCodec, s.transformer.get(), false)
	})
}

func TestStoreGuaranteedUpdate(t *testing.T) {
	t.Run("Update", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGuaranteedUpdate(ctx, t, s, s.checkStorageInvariants(jsonCodec))
	})
	t.Run("WithTTL", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGuaranteedUpdateWithTTL(ctx, t, s)
	})
	t.Run("ChecksStoredData", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGuaranteedUpdateChecksStoredData(ctx, t, s)
	})
	t.Run("WithConflict", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGuaranteedUpdateWithConflict(ctx, t, s)
	})
	t.Run("WithSuggestionAndConflict", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestGuaranteedUpdateWithSuggestionAndConflict(ctx, t, s)
	})
	t.Run("TransformationFailure", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestTransformationFailure(ctx, t, s)
	})
}

func TestStoreWatch(t *testing.T) {
	t.Run("Watch", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatch(ctx, t, s)
	})
	t.Run("ClusterScopedWatch", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestClusterScopedWatch(ctx, t, s)
	})
	t.Run("NamespaceScopedWatch", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestNamespaceScopedWatch(ctx, t, s)
	})
	t.Run("DeleteTriggerWatch", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDeleteTriggerWatch(ctx, t, s)
	})
	t.Run("WatchFromZero", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{ownCluster: true})
		storagetesting.RunTestWatchFromZero(ctx, t, s, compaction(s, s.client.Client))
	})
	t.Run("WatchFromNonZero", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatchFromNonZero(ctx, t, s)
	})
	t.Run("DelayedWatchDelivery", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestDelayedWatchDelivery(ctx, t, s)
	})
	t.Run("WatchError", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatchError(ctx, t, s)
	})
	t.Run("WatchContextCancel", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatchContextCancel(ctx, t, s)
	})
	t.Run("WatcherTimeout", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatcherTimeout(ctx, t, s)
	})
	t.Run("WatchDeleteEventObjectHaveLatestRV", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatchDeleteEventObjectHaveLatestRV(ctx, t, s)
	})
	t.Run("WatchInitializationSignal", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunTestWatchInitializationSignal(ctx, t, s)
	})
	t.Run("ProgressNotify", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{progressNotify: true})
		storagetesting.RunOptionalTestProgressNotify(ctx, t, s, increaseRV(s.client.Client))
	})
	t.Run("WatchDispatchBookmarkEvents", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{progressNotify: true})
		storagetesting.RunTestWatchDispatchBookmarkEvents(ctx, t, s, false)
	})
	t.Run("SendInitialEventsBackwardCompatibility", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunSendInitialEventsBackwardCompatibility(ctx, t, s)
	})
	for _, rangeStream := range []bool{false, true} {
		t.Run(fmt.Sprintf("RangeStream=%v", rangeStream), func(t *testing.T) {
			featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.EtcdRangeStream, rangeStream)
			t.Run("WatchSemantics", func(t *testing.T) {
				ctx, s := newStore(t, storeOptions{})
				storagetesting.RunWatchSemantics(ctx, t, s)
			})
			t.Run("WatchSemanticsWithConcurrentDecode", func(t *testing.T) {
				featuregatetesting.SetFeatureGateDuringTest(t, utilfeature.DefaultFeatureGate, features.ConcurrentWatchObjectDecode, true)
				ctx, s := newStore(t, storeOptions{})
				storagetesting.RunWatchSemantics(ctx, t, s)
			})
			t.Run("WatchSemanticInitialEventsExtended", func(t *testing.T) {
				ctx, s := newStore(t, storeOptions{})
				storagetesting.RunWatchSemanticInitialEventsExtended(ctx, t, s)
			})
			t.Run("WatchListMatchSingle", func(t *testing.T) {
				ctx, s := newStore(t, storeOptions{})
				storagetesting.RunWatchListMatchSingle(ctx, t, s)
			})
		})
	}
	t.Run("WatchErrorIsBlockingFurtherEvents", func(t *testing.T) {
		ctx, s := newStore(t, storeOptions{})
		storagetesting.RunWatchErrorIsBlockingFurtherEvents(ctx, t, s)
	})
}

// maxPageSize is the etcd3 store's largest page (maxLimit in store.go):
// it doubles its page size up to this while filtered pages come back short.
const maxPageSize = 10000

// checkStorageCalls checks how many values the store decoded and how many
// range requests it sent for a list, as Kubernetes' etcd3 tests do: plinth
// must page exactly as etcd does for the counts to match.
func (s *testStore) checkStorageCalls() storagetesting.CallsValidation {
	transformer := s.transformer.get().(*storagetesting.PrefixTransformer)
	recorder := s.client.KV.(*storagetesting.KVRecorder)
	return func(t *testing.T, pageSize, estimatedProcessedObjects uint64) {
		if reads := transformer.GetReadsAndReset(); reads != estimatedProcessedObjects {
			t.Errorf("values decoded: %d, want %d", reads, estimatedProcessedObjects)
		}
		wantCalls := uint64(1)
		if pageSize != 0 {
			limit := pageSize
			for sum := uint64(1); sum < estimatedProcessedObjects; {
				limit = min(limit*2, maxPageSize)
				sum += limit
				wantCalls++
			}
		}
		if calls := recorder.GetReadsAndReset() + recorder.GetStreamReadsAndReset(); calls != wantCalls {
			t.Fatalf("range requests: %d, want %d", calls, wantCalls)
		}
	}
}
