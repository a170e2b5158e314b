"""``python -m servefiles`` is the ``servefiles`` command."""

from .cli import main

main()
