#!/usr/bin/env bash
# make test: services up, then lint, types and the whole pytest suite on PostgreSQL and Redis.
set -uo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh || exit 1
# The Stripe gateway is tested against localstripe, which the suite starts itself.
scripts/localstripe.sh || exit 1
source scripts/test-env.sh

status=0
scripts/lint.sh || status=1
echo "==> pytest (PostgreSQL $DATABASE_URL, Redis $REDIS_URL)"
.venv/bin/pytest "$@"
pytest_status=$?
[ $pytest_status -eq 0 ] || status=1
if [ $status -ne 0 ]; then echo "make test: FAILED (see above)"; fi
exit $status
