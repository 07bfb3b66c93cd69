# plinth's build, test and benchmark entry points. Everything a target needs is
# fetched by the Go toolchain from the module proxy; nothing is installed by hand.

GO      ?= go
BIN     ?= bin
# Fuzz time per target for `make fuzz`.
FUZZTIME ?= 30s

.PHONY: build test test-unit test-compat test-bench fuzz bench vet clean

build:
	$(GO) build -o $(BIN)/plinth ./cmd/plinth
	$(GO) build -o $(BIN)/plinthctl ./cmd/plinthctl

# The whole suite: static checks, unit and integration tests under the race
# detector (fuzz targets run their seed corpora), the crash tests, the
# differential tests against a reference etcd, and the benchmark harness's
# own tests.
test: vet test-unit test-compat test-bench

vet:
	@test -z "$$(gofmt -l cmd internal test bench)" || { echo "gofmt needed:"; gofmt -l cmd internal test bench; exit 1; }
	$(GO) vet ./...

test-unit:
	$(GO) test -race -count=1 -timeout 15m ./...

test-compat:
	$(GO) -C test/compat vet ./...
	$(GO) -C test/compat test -count=1 -timeout 15m ./...

test-bench:
	$(GO) -C bench vet ./...
	$(GO) -C bench test -count=1 -timeout 10m ./...

# Longer fuzzing of every fuzz target, FUZZTIME each.
fuzz:
	$(GO) test ./internal/mvcc -run '^$$' -fuzz FuzzHistoryKey -fuzztime $(FUZZTIME)
	$(GO) test ./internal/mvcc -run '^$$' -fuzz FuzzRecord -fuzztime $(FUZZTIME)
	$(GO) test ./internal/api -run '^$$' -fuzz FuzzValidate -fuzztime $(FUZZTIME)
	$(GO) test ./internal/entry -run '^$$' -fuzz FuzzDecode -fuzztime $(FUZZTIME)
	$(GO) test ./internal/entry -run '^$$' -fuzz FuzzPut -fuzztime $(FUZZTIME)
	$(GO) test ./internal/storage -run '^$$' -fuzz FuzzLogStore -fuzztime $(FUZZTIME)

# Side-by-side benchmark of plinth, etcd and a do-nothing gRPC floor; prints
# ratios. BENCHFLAGS passes flags to benchrun (e.g. -quick, -loads=put).
bench:
	$(GO) -C bench run ./cmd/benchrun $(BENCHFLAGS)

clean:
	rm -rf $(BIN)
