"""Django integration: a Storage backend that keeps FileField and ImageField uploads in the
servefiles database, and the WSGI wrapper that serves them.

Settings (``settings.SERVEFILES``)::

    SERVEFILES = {
        "DB": "postgresql://app@db/app",   # required: where the files live
        "PREFIX": "/media",                # default: MEDIA_URL's path, else /media
        "CACHE_DIR": "/var/cache/servefiles",  # default: the servefiles cache directory
        "BASE_URL": "",                    # prepended to url(), e.g. a CDN origin
        "PRIVATE": ["invoices"],           # folders served only to those allowed (default: none)
        "SIGNING_KEYS": [os.environ["SERVEFILES_SIGNING_KEY"]],  # url() then signs private names
        "URL_EXPIRES": 3600,               # seconds a signed url() works (default 3600)
        "AUTHORIZE": "app.access.allowed", # authorize(environ, key) -> bool, or its dotted path
        "OPTIONS": {},                     # any other ServeFilesWSGI option
    }
    STORAGES = {"default": {"BACKEND": "servefiles.contrib.django.ServeFilesStorage"}, ...}

and in ``wsgi.py``: ``application = servefiles.contrib.django.wrap(get_wsgi_application())``.

The storage and the wrapper share one :class:`ServeFilesWSGI` per process, so the process
that saved a file serves it on the next request (read-your-writes); other frontends learn
of it from the change feed. Names never overwrite: a save that finds its name taken (even
by a racing upload on another frontend, checked atomically in the database) takes the
next free name, as Django's FileSystemStorage does, within the ``max_length`` passed to
``save()`` (a FileField's). ``open(name, "r")`` gives text (UTF-8, universal newlines), as
FileSystemStorage does on a UTF-8 host; ``"rb"``, the default, gives bytes. Files are written
only by ``save()``: opening one for writing is a ValueError.

Private names: ``url(name)`` of a name under a ``PRIVATE`` folder is a signed URL valid for
``URL_EXPIRES`` seconds when ``SIGNING_KEYS`` are set (django-storages' query-string auth),
else the plain URL, which the ``AUTHORIZE`` hook then judges per request (it gets the WSGI
environ, in the request's thread: build a Django request from it to read the session). Public
names always get the plain URL.
"""

from __future__ import annotations

import contextvars
import io
import tempfile
import threading
from collections.abc import Iterator
from datetime import datetime
from typing import IO, Any
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.files import File
from django.core.files.storage import Storage
from django.utils import timezone
from django.utils.deconstruct import deconstructible

from .. import defaults
from ..content_types import check_content_type
from ..errors import InvalidContentType, InvalidKey, NotFound, PreconditionFailed
from ..keys import canonical_key
from ..middleware.wsgi import ServeFilesWSGI, WSGIApp
from ..store import FileMeta

SPOOL_BYTES = 1024 * 1024
"""Files opened through the storage stay in memory up to this size, then spill to a temp file."""
SAVE_ATTEMPTS = 100
TEXT_ENCODING = "utf-8"
"""How ``open(name, "r")`` decodes: the stored bytes are shared by every host, so not the host's locale."""

_save_max_length: contextvars.ContextVar[int | None] = contextvars.ContextVar("servefiles_save_max_length")
"""The max_length of the save() under way in this thread (Django does not pass it to _save)."""

_files: ServeFilesWSGI | None = None
_files_lock = threading.Lock()


def files() -> ServeFilesWSGI:
    """This process's servefiles, built from ``settings.SERVEFILES`` on first use."""
    global _files
    with _files_lock:
        if _files is None:
            config: dict[str, Any] = getattr(settings, "SERVEFILES", None) or {}
            if not config.get("DB"):
                raise ImproperlyConfigured('settings.SERVEFILES["DB"] must name the servefiles database')
            media_path = urlsplit(getattr(settings, "MEDIA_URL", "") or "").path
            prefix = config.get("PREFIX") or (media_path if media_path.strip("/") else defaults.PREFIX)
            options = {**_private_options(config), **config.get("OPTIONS", {})}
            _files = ServeFilesWSGI(None, config["DB"], prefix, config.get("CACHE_DIR"), **options)
        return _files


def _private_options(config: dict[str, Any]) -> dict[str, Any]:
    """The ServeFilesWSGI options of ``PRIVATE``, ``SIGNING_KEYS``, ``URL_EXPIRES`` and ``AUTHORIZE``
    (a callable or its dotted path)."""
    options: dict[str, Any] = {}
    if config.get("PRIVATE"):
        options["private"] = list(config["PRIVATE"])
    if config.get("SIGNING_KEYS"):
        options["signing_keys"] = list(config["SIGNING_KEYS"])
    if config.get("URL_EXPIRES") is not None:
        options["url_expires"] = int(config["URL_EXPIRES"])
    authorize = config.get("AUTHORIZE")
    if isinstance(authorize, str):
        from django.utils.module_loading import import_string

        authorize = import_string(authorize)
    if authorize is not None:
        options["authorize"] = authorize
    return options


def wrap(application: WSGIApp) -> ServeFilesWSGI:
    """Serve the files in front of Django's WSGI application (``wsgi.py``)."""
    served = files()
    served.app = application
    return served


@deconstructible
class ServeFilesStorage(Storage):
    """Django Storage over the servefiles database (``STORAGES["default"]``)."""

    def save(self, name: str | None, content: Any, max_length: int | None = None) -> str:
        """Django's save(), with ``max_length`` kept for _save's retries (per thread and task)."""
        token = _save_max_length.set(max_length)
        try:
            return super().save(name, content, max_length=max_length)
        finally:
            _save_max_length.reset(token)

    def _save(self, name: str, content: File[Any]) -> str:
        content_type = _usable_type(getattr(content, "content_type", None))
        max_length = _save_max_length.get(None)  # None when _save is called outside save()
        for _ in range(SAVE_ATTEMPTS):
            key = self._key(name)
            if hasattr(content, "seek"):
                content.seek(0)
            try:
                files().put(key, _Reader(content), content_type, expect=lambda live: live is None)
                return key
            except PreconditionFailed:
                # Taken since get_available_name looked (another upload, another frontend).
                name = self.get_available_name(name, max_length=max_length)
        raise FileExistsError(f"no free name found for {name!r}")

    def _open(self, name: str, mode: str = "rb") -> File[Any]:
        key = self._key(name)
        return StoredFile(_fetch(key, name, mode), name, key, mode)

    def delete(self, name: str) -> None:
        if name:
            files().delete(self._key(name))

    def exists(self, name: str) -> bool:
        return self._stat(name) is not None

    def size(self, name: str) -> int:
        return self._meta(name).size

    def url(self, name: str | None) -> str:
        """The name's URL: signed for ``URL_EXPIRES`` seconds when it is private and signing keys are
        set (see the module), else plain; ``BASE_URL`` in front."""
        if name is None:
            raise ValueError("this file has no name")
        base = ((getattr(settings, "SERVEFILES", None) or {}).get("BASE_URL") or "").rstrip("/")
        return base + files().url(self._key(name))

    def listdir(self, path: str) -> tuple[list[str], list[str]]:
        prefix = path.strip("/") + "/" if path.strip("/") else ""
        directories: dict[str, None] = {}
        names: list[str] = []
        for meta in _every(prefix):
            head, slash, _ = meta.key[len(prefix) :].partition("/")
            if slash:
                directories[head] = None
            else:
                names.append(head)
        return list(directories), names

    def get_created_time(self, name: str) -> datetime:
        return _django_time(self._meta(name).created_at)

    def get_modified_time(self, name: str) -> datetime:
        return _django_time(self._meta(name).updated_at)

    def get_accessed_time(self, name: str) -> datetime:
        return self.get_modified_time(name)

    # -- helpers ------------------------------------------------------------------------

    @staticmethod
    def _key(name: str) -> str:
        try:
            return canonical_key(str(name).replace("\\", "/"))
        except InvalidKey as exc:
            from django.core.exceptions import SuspiciousFileOperation

            raise SuspiciousFileOperation(f"{name!r} cannot be stored: {exc}") from exc

    def _stat(self, name: str) -> FileMeta | None:
        return files().stat(self._key(name))

    def _meta(self, name: str) -> FileMeta:
        meta = self._stat(name)
        if meta is None:
            raise FileNotFoundError(name)
        return meta


class StoredFile(File):  # type: ignore[type-arg]
    """A stored file's bytes, spooled (text over them in a text mode); reopened (``open()`` after
    ``close()``, in the mode given, else its own, as Django's File does) from the store, never
    from a local path that happens to share its name."""

    def __init__(self, file: IO[Any], name: str, key: str, mode: str = "rb") -> None:
        super().__init__(file, name)
        self._key = key
        self.mode = mode

    def open(self, mode: str | None = None, *args: Any, **kwargs: Any) -> StoredFile:
        if self.closed:
            self.file = _fetch(self._key, self.name or self._key, mode or self.mode)
            self.mode = mode or self.mode
        else:
            self.seek(0)
        return self


def _text_mode(mode: str) -> bool:
    """Whether ``mode`` reads text ("r", "rt") rather than bytes ("rb"); ValueError for a mode
    that writes (save() writes) or that Python's open() would refuse."""
    if any(flag in mode for flag in "wax+"):
        raise ValueError(f"servefiles files are opened for reading (mode {mode!r}); save() writes them")
    if "".join(sorted(mode)) not in ("r", "br", "rt"):
        raise ValueError(f"invalid mode: {mode!r}")
    return "b" not in mode


def _fetch(key: str, name: str, mode: str = "rb") -> IO[Any]:
    """The key's bytes in a spooled temp file (memory up to SPOOL_BYTES), at position 0; as
    UTF-8 text with universal newlines (what open() gives on a UTF-8 host) in a text mode."""
    text = _text_mode(mode)
    spooled: IO[bytes] = tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)  # noqa: SIM115 - the File owns it
    try:
        for chunk in files().open(key):
            spooled.write(chunk)
    except NotFound:
        spooled.close()
        raise FileNotFoundError(name) from None
    except BaseException:
        spooled.close()
        raise
    spooled.seek(0)
    if text:
        return io.TextIOWrapper(spooled, encoding=TEXT_ENCODING)
    return spooled


def _usable_type(declared: object) -> str | None:
    """A declared upload type servefiles can store, else None (guess from the name): browsers
    and clients send anything in a multipart part, and a bad one must not fail the save."""
    if not isinstance(declared, str) or not declared:
        return None
    try:
        return check_content_type(declared)
    except InvalidContentType:
        return None


class _Reader:
    """A Django File read in chunks of its own choosing (an UploadedFile may live in memory
    or in a temp file); the store re-cuts them into 256 KiB chunks."""

    def __init__(self, content: File[Any]) -> None:
        self._chunks = content.chunks()

    def read(self, size: int = -1, /) -> bytes:
        return next(self._chunks, b"")


def _every(prefix: str) -> Iterator[FileMeta]:
    after: str | None = None
    while page := files().list(prefix, 1000, after):
        yield from page
        after = page[-1].key


def _django_time(moment: datetime) -> datetime:
    """Aware in UTC when USE_TZ, else naive in the current time zone (Django's convention)."""
    return moment if settings.USE_TZ else timezone.make_naive(moment)
