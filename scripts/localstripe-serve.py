"""Runs localstripe on 127.0.0.1 only (its own command listens on every interface), on the
port given, starting empty and keeping nothing on disk. Started by the test suite with
localstripe's own virtualenv: .venv-localstripe/bin/python scripts/localstripe-serve.py PORT
"""

import sys

from aiohttp import web
from localstripe import resources, server

# localstripe pickles its whole store to /tmp on every write; test runs must not share it.
resources.Store.dump_to_disk = lambda self: None

# localstripe predates automatic_payment_methods and refuses parameters it does not know.
# Cards are the only payment method it has, so the setting can be accepted and ignored.
_payment_intent_init = resources.PaymentIntent.__init__


def _payment_intent_init_accepting_automatic(self, *args, automatic_payment_methods=None, **kw):
    _payment_intent_init(self, *args, **kw)


resources.PaymentIntent.__init__ = _payment_intent_init_accepting_automatic

web.run_app(server.app, host="127.0.0.1", port=int(sys.argv[1]), print=None)
