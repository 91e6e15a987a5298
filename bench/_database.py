"""What the PostgreSQL benches share: the checks that they run where they mean to, and a
migrated database of their own that is dropped on the way out whatever happens."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

POSTGRES_SCHEMES = ("postgres", "postgresql", "pgsql", "postgis")


class BenchError(Exception):
    """The bench cannot run; the message says why and what to do."""


def postgres_url_check() -> str:
    url = os.environ.get("DATABASE_URL", "")
    if urlsplit(url).scheme not in POSTGRES_SCHEMES:
        shown = urlsplit(url).scheme + "://…" if url else "not set"
        raise BenchError(
            f"DATABASE_URL is {shown}; this bench measures PostgreSQL only. "
            "Point it at PostgreSQL (source scripts/test-env.sh, or run scripts/bench.sh)."
        )
    return url


def django_setup() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    import django

    django.setup()
    from django.db import connection

    if connection.vendor != "postgresql":
        raise BenchError(f"the database is {connection.vendor}, not PostgreSQL; check DATABASE_URL")


@contextlib.contextmanager
def throwaway_database(suffix: str, progress: Callable[[str], None]) -> Iterator[str]:
    """A migrated database `test_<name>_<suffix>`, dropped on the way out whatever happens."""
    from django.db import connection

    real_name = str(connection.settings_dict["NAME"])
    bench_name = f"test_{real_name}_{suffix}"
    connection.settings_dict["TEST"]["NAME"] = bench_name
    progress(f"creating database {bench_name} (migrations)")
    try:
        # Migrations talk on stdout at times; stdout is for the results.
        with contextlib.redirect_stdout(sys.stderr):
            connection.creation.create_test_db(
                verbosity=0, autoclobber=True, serialize=False, keepdb=False
            )
        yield bench_name
    finally:
        # Only once create_test_db has switched the connection over is there anything to drop;
        # before that, NAME is still the real database, which must never be dropped.
        if connection.settings_dict["NAME"] == bench_name:
            progress(f"dropping database {bench_name}")
            with contextlib.redirect_stdout(sys.stderr):
                connection.creation.destroy_test_db(real_name, verbosity=0, keepdb=False)
