"""The adapters that carry out servefiles' decisions for a web server."""

from .asgi import ServeFiles
from .inline import inline_protocol
from .wsgi import ServeFilesWSGI
from .zerocopy import ZeroCopySend

__all__ = ["ServeFiles", "ServeFilesWSGI", "ZeroCopySend", "inline_protocol"]
