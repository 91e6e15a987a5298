"""Runs localstripe on 127.0.0.1 only (its own command listens on every interface), on the
port given, starting empty and keeping nothing on disk. Started by the test suite with
localstripe's own virtualenv: .venv-localstripe/bin/python scripts/localstripe-serve.py PORT
"""

import sys

from aiohttp import web
from localstripe import resources, server

# localstripe pickles its whole store to /tmp on every write; test runs must not share it.
resources.Store.dump_to_disk = lambda self: None

web.run_app(server.app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
