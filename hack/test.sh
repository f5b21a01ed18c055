#!/bin/sh
# The test half of `make test` (CI: .ci/run -> make test). Two runs, both
# through tests/cmd/testrun, which fails on any test that failed and on any
# skip not listed in tests/allowed-skips.txt:
#   1. every unit and package test with the race detector;
#   2. the suites that drive the built binaries (end-to-end, critest, the
#      CRI conformance comparison) without it: the race detector instruments
#      only the test binary there, which mostly waits on real processes,
#      and they are the bulk of the time budget.
# Both run even if the first fails, so one CI run shows every failure.
set -u
cd "$(dirname "$0")/.."
GO=${GO:-go}
mkdir -p _output bin
$GO build -o bin/testrun ./tests/cmd/testrun || exit 1
suites='/tests/e2e$|/tests/critest$|/tests/criconformance$'
unit=$($GO list ./... | grep -Ev "$suites")
rc=0
bin/testrun -raw _output/test-unit.json -- $GO test -json -race -p 1 -count=1 -timeout 45m $unit || rc=1
bin/testrun -raw _output/test-suites.json -- $GO test -json -p 1 -count=1 -timeout 60m ./tests/e2e/ ./tests/critest/ ./tests/criconformance/ || rc=1
exit $rc
