# Sourced by the test and bench scripts: the environment the suite runs in (real PostgreSQL
# and Redis, production-like settings minus HTTPS).
export DATABASE_URL=${TEST_DATABASE_URL:-postgres://parley:parley@127.0.0.1:5432/parley}
# Database 1 keeps test keys away from a developer's database 0.
export REDIS_URL=${TEST_REDIS_URL:-redis://127.0.0.1:6379/1}
export SECRET_KEY=parley-tests-only-5b0c1e4f9a7d2c3e8f6a1b9d0e7c4a2f3b8d1e6c9a0f7b2d
export DEBUG=0
export HTTPS=0
export STATIC_MANIFEST=0
export ALLOWED_HOSTS=testserver,127.0.0.1,localhost
export PARLEY_VAR_DIR=${PARLEY_VAR_DIR:-$PWD/var/test}
export DJANGO_SETTINGS_MODULE=config.settings
export DATABASE_POOL_MAX=${DATABASE_POOL_MAX:-20}
# The suite and the benches pay with the built-in test-card provider on purpose (billing's
# deploy check refuses it with DEBUG off unless a deployment opts in).
export LOCAL_PAYMENTS_ALLOWED=${LOCAL_PAYMENTS_ALLOWED:-1}
