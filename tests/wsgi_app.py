"""A WSGI app for gunicorn in tests: ``ServeFilesWSGI(None, **options)`` with the options
as JSON in ``SERVEFILES_TEST_WSGI`` (the WSGI counterpart of ``servefiles serve``)."""

from __future__ import annotations

import json
import os

from servefiles import ServeFilesWSGI

application = ServeFilesWSGI(None, **json.loads(os.environ["SERVEFILES_TEST_WSGI"]))

if os.environ.get("SERVEFILES_TEST_WSGI_IMPORT_PUT"):
    # Use the Python API in the importing process: under `gunicorn --preload` that is the
    # master, so its loop, pool and index exist before the fork; workers must not share them.
    key, _, text = os.environ["SERVEFILES_TEST_WSGI_IMPORT_PUT"].partition("=")
    application.put(key, text.encode())
