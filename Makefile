# nodetrust: run `make run` for the all-in-one demo and `make test` for the tests.
# Needs Go (see go.mod); everything else the targets install themselves.

GO        ?= go
BIN       := bin/nodetrust
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -s -w -X github.com/nodetrust/nodetrust/internal/version.Version=$(VERSION)
FUZZTIME  ?= 10s

.PHONY: all build run test unit fuzz bench lint deps package clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/nodetrust

# The main job: an all-in-one demo on embedded defaults, unprivileged.
run: build
	./$(BIN) demo

# Everything CI runs: vet, the unit and integration tests (root-only tests
# skip with a reason elsewhere), and a short run of each fuzz target.
test: deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 15m ./...
	$(MAKE) fuzz

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzPodViewConceals$$' -fuzztime $(FUZZTIME) ./metadata/

# Benchmarks against baselines measured in the same run; results go to
# docs/performance.md by hand, with the command that produced them.
bench: build
	$(GO) run ./test/bench/metadatabench -bin $(BIN)
	$(GO) run ./test/bench/controlplanebench
	$(GO) run ./test/bench/agentbench -bin $(BIN)
	$(GO) run ./test/bench/tunnelbench
	$(GO) run ./test/bench/konnbench
	$(GO) run ./test/bench/rotationbench

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

# deb and rpm packages of the binary built above, in dist/ (docs/packaging.md):
# nodetrust_<v>-1_amd64.deb, nodetrust-agent_<v>-1_all.deb, nodetrust-server_<v>-1_all.deb
# and nodetrust-<v>-1.x86_64.rpm, nodetrust-{agent,server}-<v>-1.noarch.rpm.
# VERSION=1.2.3 make package builds version 1.2.3; reproducible for a given
# SOURCE_DATE_EPOCH (default: the last commit's time). PACKAGE_FLAGS passes
# flags to packaging/cmd/nfpmbuild, e.g. -allow-missing-units.
DIST              ?= dist
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)

package: build
	SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./packaging/cmd/nfpmbuild -bin $(BIN) -version '$(VERSION)' -out $(DIST) $(PACKAGE_FLAGS)

# Tools and Debian packages the tests need: Go, and as root the Debian
# packages of the machine tests (qemu, debootstrap, nspawn, a kernel, rpm, linters).
deps:
	@$(GO) version >/dev/null
	@sh test/machine/install-deps.sh

clean:
	rm -rf bin
