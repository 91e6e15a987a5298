"""The room page in real Chromium, against a whole deployment in a loopback-only namespace.

`rooms/tests/test_browser.py` runs this folder under `unshare -n`; anywhere else it is not
collected (see conftest.py).
"""
