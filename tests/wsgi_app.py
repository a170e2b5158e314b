"""A WSGI app for gunicorn in tests: ``ServeFilesWSGI(None, **options)`` with the options
as JSON in ``SERVEFILES_TEST_WSGI`` (the WSGI counterpart of ``servefiles serve``)."""

from __future__ import annotations

import json
import os

from servefiles import ServeFilesWSGI

application = ServeFilesWSGI(None, **json.loads(os.environ["SERVEFILES_TEST_WSGI"]))
