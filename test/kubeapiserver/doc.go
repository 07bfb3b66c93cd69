// Package kubeapiserver runs the real kube-apiserver of Kubernetes v1.37.2
// on a plinth member and works with it through client-go: create, list,
// update, watch and delete. The binaries come from `make
// test-kube-apiserver`, which builds both (kube-apiserver from the module
// proxy, as this module's tool) and names them in PLINTH_BIN and
// KUBE_APISERVER_BIN; without them the test skips. A module of its own so
// that plinth's go.mod never depends on Kubernetes.
package kubeapiserver
