"""The adapters that carry out servefiles' decisions for a web server."""

from .asgi import ServeFiles

__all__ = ["ServeFiles"]
