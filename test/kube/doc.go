// Package kube runs the Kubernetes API server's storage layer against a
// plinth cluster: the etcd3 store of k8s.io/apiserver and its watch cache
// (the cacher, which serves consistent reads from the cache by asking the
// store for watch progress), driven by the storage conformance functions
// that Kubernetes runs against its own embedded etcd
// (k8s.io/apiserver/pkg/storage/testing). It is a module of its own so that
// plinth's go.mod never depends on Kubernetes.
package kube
