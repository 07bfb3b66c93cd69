# plinth's build, test and benchmark entry points. Everything a target needs is
# fetched by the Go toolchain from the module proxy; nothing is installed by hand.

GO      ?= go
BIN     ?= bin
# Fuzz budget of `make fuzz`: executions of each fast target; the slower
# ones (Pebble per execution, gRPC validation) get a fraction, so that each
# runs about 30s on 2 cores. Budgets are counts, not durations: with a
# duration, Go 1.26's fuzz coordinator can fail a target with a bare "context
# deadline exceeded" at the deadline, having found nothing (golang/go#75804,
# fixed in Go 1.27). A real finding always writes its input under
# testdata/fuzz/.
FUZZ_EXECS ?= 250000

.PHONY: build test test-unit test-compat test-kube test-kube-apiserver test-bench test-faults test-crash test-powerloss fuzz bench vet proto clean

build:
	$(GO) build -o $(BIN)/plinth ./cmd/plinth
	$(GO) build -o $(BIN)/plinthctl ./cmd/plinthctl

# The whole suite: static checks, unit and integration tests under the race
# detector (fuzz targets run their seed corpora), the crash tests, the
# differential tests against a reference etcd, and the benchmark harness's
# own tests.
test: vet test-unit test-compat test-bench

vet:
	@test -z "$$(gofmt -l cmd internal test bench election examples)" || { echo "gofmt needed:"; gofmt -l cmd internal test bench election examples; exit 1; }
	$(GO) vet ./...

test-unit:
	$(GO) test -race -count=1 -timeout 15m ./...

test-compat:
	$(GO) -C test/compat vet ./...
	$(GO) -C test/compat test -count=1 -timeout 15m ./...

# The Kubernetes API server's storage layer (k8s.io/apiserver's etcd3 store
# and watch cache) against a 3-member plinth cluster, driven by Kubernetes'
# own storage conformance functions (own Go module; KUBE_MEMBERS=1 for one
# member).
test-kube:
	$(GO) -C test/kube vet ./...
	$(GO) -C test/kube test -count=1 -timeout 10m ./...

# The real kube-apiserver (Kubernetes v1.37.2, built from the module proxy as
# test/kubeapiserver's tool: several minutes the first time) on a plinth
# member, used through client-go. Not part of `make test`.
test-kube-apiserver:
	$(GO) build -o $(BIN)/plinth ./cmd/plinth
	$(GO) -C test/kubeapiserver build -o $(abspath $(BIN))/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
	$(GO) -C test/kubeapiserver vet ./...
	PLINTH_BIN=$(abspath $(BIN))/plinth KUBE_APISERVER_BIN=$(abspath $(BIN))/kube-apiserver \
		$(GO) -C test/kubeapiserver test -count=1 -timeout 10m -v ./...

test-bench:
	$(GO) -C bench vet ./...
	$(GO) -C bench test -count=1 -timeout 10m ./...

# The cluster fault tests for longer: kill -9, pauses and restarts of members,
# loss of quorum, partitions (as root: members in network namespaces) and
# members replaced under load for FAULTS_DURATION, with porcupine checking
# the history and the watch checker every watcher's events; then the leader
# killed and paused in turn while leases are kept alive and left to expire
# (TestLeasesUnderLeaderFaults). `make test` runs each fault once. FAULTSFLAGS passes more flags
# (e.g. -cluster.seed=N to rerun a failure's choices, -cluster.faults=a,b to
# make only those).
FAULTS_DURATION ?= 5m
test-faults:
	$(GO) test -race -count=1 -timeout 60m -v ./test/cluster -run 'TestLinearizableUnderFaults|TestLeasesUnderLeaderFaults' -cluster.duration=$(FAULTS_DURATION) $(FAULTSFLAGS)

# The kill -9 crash tests for longer: each test of test/crash (kill -9 under
# load; during log replay, snapshot install and compaction) runs session after
# session, each on a new member or cluster, for CRASH_DURATION (so the target
# takes about four times that). `make test` runs each once. CRASHFLAGS passes
# more flags (e.g. -crash.seed=N to rerun a failure's choices, -run to pick a
# test).
CRASH_DURATION ?= 5m
test-crash:
	$(GO) test -race -count=1 -timeout 0 -v ./test/crash -crash.duration=$(CRASH_DURATION) $(CRASHFLAGS)

# The power loss tests for longer: members over an in-memory file system that
# loses every write not covered by a sync, the power cut at random points
# under load, each test for POWERLOSS_DURATION (`make test` runs a few cuts
# of each), then the disk fault tests. POWERLOSSFLAGS passes more flags (e.g.
# -powerloss.seed=N to rerun a failure's choices).
POWERLOSS_DURATION ?= 5m
test-powerloss:
	$(GO) test -race -count=1 -timeout 120m -v ./internal/server -run 'TestPowerLoss|TestDiskFaults' -powerloss.duration=$(POWERLOSS_DURATION) $(POWERLOSSFLAGS)

# Longer fuzzing of every fuzz target (FUZZ_EXECS, above).
fuzz:
	$(GO) test ./internal/mvcc -run '^$$' -fuzz FuzzHistoryKey -fuzztime $(FUZZ_EXECS)x
	$(GO) test ./internal/mvcc -run '^$$' -fuzz FuzzRecord -fuzztime $(FUZZ_EXECS)x
	$(GO) test ./internal/api -run '^$$' -fuzz FuzzValidate -fuzztime $$(( $(FUZZ_EXECS) / 12 ))x
	$(GO) test ./internal/entry -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZ_EXECS)x
	$(GO) test ./internal/entry -run '^$$' -fuzz FuzzPut -fuzztime $(FUZZ_EXECS)x
	$(GO) test ./internal/storage -run '^$$' -fuzz FuzzLogStore -fuzztime $$(( $(FUZZ_EXECS) / 16 ))x
	$(GO) test ./internal/transport -run '^$$' -fuzz FuzzReadMessage -fuzztime $(FUZZ_EXECS)x
	$(GO) test ./internal/membership -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZ_EXECS)x
	$(GO) test ./internal/snapshot -run '^$$' -fuzz FuzzReceive -fuzztime $$(( $(FUZZ_EXECS) / 16 ))x

# Side-by-side benchmark of plinth, etcd and a do-nothing gRPC floor; prints
# ratios. BENCHFLAGS passes flags to benchrun (e.g. -quick, -loads=put).
bench:
	$(GO) -C bench run ./cmd/benchrun $(BENCHFLAGS)

# Regenerates the Go code of the Lock and Election services
# (internal/lockelect/v3lockpb, v3electionpb) from their .proto files. Needs
# protoc on the PATH (Debian: apt-get install protobuf-compiler); the Go
# plugins come from the module proxy at the versions below. The stubs in
# internal/lockelect/protostub stand for etcd's rpc.proto and kv.proto, whose
# Go types the generated code uses.
PROTOC_GEN_GO      ?= google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
PROTOC_GEN_GO_GRPC ?= google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.5.1
proto:
	GOBIN=$(abspath $(BIN))/protoc-plugins $(GO) install $(PROTOC_GEN_GO)
	GOBIN=$(abspath $(BIN))/protoc-plugins $(GO) install $(PROTOC_GEN_GO_GRPC)
	for svc in v3lock v3election; do \
		dir=internal/lockelect/$${svc}pb; \
		PATH=$(abspath $(BIN))/protoc-plugins:$$PATH protoc -I internal/lockelect/protostub -I $$dir \
			--go_out=paths=source_relative:$$dir --go-grpc_out=paths=source_relative:$$dir $$svc.proto || exit 1; \
	done

clean:
	rm -rf $(BIN)
