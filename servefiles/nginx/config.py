"""The generated nginx server block and the internal locations servefiles redirects to.

Two modes (``servefiles nginx-config --mode``):

* ``accel``: every request for the prefix reaches servefiles, which decides the response
  (key gate, freshness, preconditions) and, for a whole-file GET, answers with
  ``X-Accel-Redirect`` to :data:`ACCEL_LOCATION`, an internal location over the disk
  tier's ``objects/``; nginx sends the bytes with servefiles' headers.
* ``tree``: nginx first tries the published tree (``root`` + ``try_files``), so hits
  never reach Python; a miss goes to servefiles, which answers it as ``accel`` would and
  publishes the file behind the reply; a request for a file on disk but not (yet)
  published is published and handed back through :data:`TREE_LOCATION`. Files nginx could not serve with
  the right headers (text, HTML, SVG, a type that does not match the extension) keep
  going through ``accel``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from .. import defaults
from .static_types import NGINX_DEFAULT_TYPE, tree_types

__all__ = ["ACCEL_LOCATION", "TREE_LOCATION", "NginxSettings", "argument", "render"]

ACCEL_LOCATION = "/_servefiles_accel/"
TREE_LOCATION = "/_servefiles_tree/"

_ACCEL_HEADERS = """\
        # servefiles decided the response; nginx keeps its Content-Type, Content-Disposition,
        # Cache-Control and Accept-Ranges, and these come from it too:
        add_header ETag $upstream_http_etag;
        add_header Last-Modified $upstream_http_last_modified;
        add_header Content-Security-Policy $upstream_http_content_security_policy;
        add_header X-Content-Type-Options nosniff always;  # on nginx's own errors here too
        etag off;                 # servefiles' ETag is the content hash, not nginx's mtime-size
        if_modified_since off;    # preconditions were judged by servefiles
        max_ranges 0;             # ranges are answered by servefiles, never redirected here"""


@dataclass(frozen=True)
class NginxSettings:
    """What the generated block needs to know about the servefiles behind it."""

    mode: Literal["accel", "tree"]
    upstream: str
    prefix: str
    cache_dir: Path
    publish_dir: Path | None = None
    listen: str = "80"
    server_name: str = "_"
    max_upload_bytes: int = defaults.MAX_UPLOAD_BYTES
    cache_control: str = defaults.CACHE_CONTROL
    private: tuple[str, ...] = ()
    """Private folders (``"invoices/"``): in tree mode each gets a location that always asks servefiles."""


_SYNTAX = frozenset(" ;{}\"'\\#$")
"""Characters nginx's config reader gives a meaning to outside quotes: the separators, the
quotes themselves, the escape, comments and variables."""


def argument(text: str) -> str:
    """``text`` as one argument of an nginx directive: as it stands when nginx would read it so,
    else in double quotes with ``\\`` and ``"`` escaped (the escapes nginx's config reader,
    ``ngx_conf_read_token``, undoes inside quotes). ValueError for a control character, which
    has no place in a URL path or a directory name nginx is given."""
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in text):
        raise ValueError(f"{text!r} holds a control character: it cannot be written into an nginx config")
    if text and text.isprintable() and not _SYNTAX.intersection(text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _directory(path: Path, slash: str = "") -> str:
    """A directory (with ``slash`` after it: ``alias`` wants one) as the argument of ``root`` or
    ``alias``, which read ``$`` as a variable, quoted or not, and have no escape for it:
    :func:`argument` of it, ValueError naming the path when it holds a ``$``."""
    text = f"{path}{slash}"
    if "$" in text:
        raise ValueError(f"nginx would read the '$' in {text!r} as a variable: use a directory without one")
    return argument(text)


def render(settings: NginxSettings) -> str:
    """A complete ``upstream`` + ``server`` block for ``http { include ...; }``. ValueError when a
    prefix or directory cannot be written into nginx's config (:func:`argument`, :func:`_directory`)."""
    folder = settings.prefix.strip("/")
    prefix = f"/{folder}/" if folder else "/"  # "//" would match nothing: nginx merges slashes
    argument(prefix)  # refuse a control character before it reaches the comment below
    objects = settings.cache_dir.absolute() / "objects"
    proxy = """\
        proxy_pass http://servefiles;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Forwarded-Proto $scheme;
        proxy_request_buffering off;      # uploads stream to servefiles, which bounds their size
        proxy_buffering off;              # misses stream to the client as they are fetched
        # Unbuffered, nginx reads at most this much of a reply at a time (by default one page: a
        # 300 KB miss was some 75 reads from servefiles and as many writes to the client).
        # proxy_buffers goes unused here, but nginx checks the busy size (2 x 256k) against it.
        proxy_buffer_size 256k;
        proxy_buffers 4 256k;"""
    lines = [
        f"# servefiles behind nginx, mode {settings.mode!r}: generated by `servefiles nginx-config`.",
        f"# Run servefiles with --nginx {settings.mode}"
        + (f" --publish-dir {settings.publish_dir}" if settings.mode == "tree" else "")
        + f" --cache-dir {settings.cache_dir} --prefix {prefix.rstrip('/') or '/'}",
        "upstream servefiles {",
        f"    server {settings.upstream};",
        "    keepalive 32;",
        "}",
        "",
        "server {",
        f"    listen {settings.listen};",
        f"    server_name {settings.server_name};",
        "    # Uploads reach servefiles whichever location takes them first; it enforces the exact limit.",
        f"    client_max_body_size {max(1, settings.max_upload_bytes // (1024 * 1024) + 1)}m;",
        "",
    ]
    if settings.mode == "accel":
        lines += [f"    location {argument(prefix)} {{", proxy, "    }"]
    else:
        if settings.publish_dir is None:
            raise ValueError("tree mode needs publish_dir")
        lines += [
            f"    location {argument(prefix)} {{",
            f"        root {_directory(settings.publish_dir.absolute())};",
            "        # A published regular file, else servefiles: try_files takes files only, so a key",
            "        # that is also a directory (a/b next to a/b/c.png) reaches servefiles, not a 301.",
            "        # PUT and DELETE of a published file are the static module's 405: servefiles too.",
            "        try_files $uri @servefiles;",
            "        error_page 405 = @servefiles;",
            "        log_not_found off;",
            _types_block(),
            f'        add_header Cache-Control "{settings.cache_control}" always;',
            "        add_header X-Content-Type-Options nosniff always;",
            "        # no open_file_cache here: a withdrawn or replaced file must be noticed at once",
            "    }",
            "",
            "    location @servefiles {",
            proxy,
            "    }",
            *_private_locations(prefix, settings.private, proxy),
            "",
            f"    location {TREE_LOCATION} {{",
            "        internal;",
            f"        alias {_directory(settings.publish_dir.absolute() / prefix.strip('/'), '/')};",
            _types_block(),
            "        # Cache-Control comes with servefiles' redirect (nginx keeps it); nosniff does not:",
            "        add_header X-Content-Type-Options nosniff always;",
            "    }",
        ]
    lines += [
        "",
        f"    location {ACCEL_LOCATION} {{",
        "        internal;",
        f"        alias {_directory(objects, '/')};",
        _ACCEL_HEADERS,
        "    }",
        "",
        "    location /_servefiles/ {",
        proxy,
        "    }",
        "}",
    ]
    return "\n".join(lines) + "\n"


def _private_locations(prefix: str, private: tuple[str, ...], proxy: str) -> list[str]:
    """A location per private folder that sends every request to servefiles, never to the tree.

    ``^~``: the longest matching prefix wins and no regex location is tried after it. nginx matches
    the normalised URI (percent-decoded, ``..`` resolved, slashes merged), so ``%2e%2e`` spellings
    land here too; a spelling that does not (an NFD variant, another case) finds no private file
    in the tree, which servefiles never publishes, and reaches servefiles through ``@servefiles``.
    A folder with characters nginx reads as syntax (a space, ``;``, ``{``, a quote, ``#``, ``$``)
    is written quoted (:func:`argument`): a location's path is matched as written, never expanded.
    """
    lines = []
    for folder in private:
        lines += ["", f"    location ^~ {argument(prefix + folder)} {{", "        # private: servefiles decides", proxy,
                  "    }"]  # fmt: skip
    return lines


def _types_block() -> str:
    """The Content-Types of published files: servefiles' own table, so nginx sends the stored type."""
    entries = "\n".join(f"            {content_type} {' '.join(exts)};" for content_type, exts in tree_types().items())
    return f"        types {{\n{entries}\n        }}\n        default_type {NGINX_DEFAULT_TYPE};"
