"""The Content-Type nginx's static module sends for a published file, and which files may
therefore be published: only those for which it is exactly the type servefiles would send.

The generated ``types`` block (config.py) is :func:`tree_types`, and the tree (tree.py)
publishes a file only when :func:`publishable` says nginx would send its stored type.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ..content_types import content_type_table, is_active_content, key_extension
from ..store.types import FileMeta

__all__ = ["NGINX_DEFAULT_TYPE", "extension_types", "nginx_content_type", "publishable", "tree_types"]

NGINX_DEFAULT_TYPE = "application/octet-stream"
"""The generated block's ``default_type``: what nginx sends for an extension not in ``types``."""


def tree_types() -> dict[str, list[str]]:
    """Content type -> extensions that may be published: servefiles' own table minus text,
    active types and message/* (MHTML), which need a charset or a Content-Disposition that
    nginx's static module would not send. The generated nginx ``types`` block is exactly this."""
    return {
        content_type: extensions
        for content_type, extensions in content_type_table().items()
        if not content_type.startswith(("text/", "message/")) and not is_active_content(content_type)
    }


def extension_types(types: Mapping[str, Iterable[str]]) -> dict[str, str]:
    """A ``types`` block turned round: extension -> Content-Type."""
    return {extension: content_type for content_type, extensions in types.items() for extension in extensions}


def nginx_content_type(key: str, by_extension: Mapping[str, str]) -> str:
    """The Content-Type nginx's static module gives the key's path, found as nginx finds it:
    the text after the last dot of the last segment (a leading dot starts no extension),
    ASCII lower-cased, looked up in the ``types`` block, else ``default_type``."""
    extension = key_extension(key)
    return NGINX_DEFAULT_TYPE if extension is None else by_extension.get(extension, NGINX_DEFAULT_TYPE)


def publishable(meta: FileMeta, allowed: Iterable[str], by_extension: Mapping[str, str]) -> bool:
    """Whether nginx, serving the file statically, would send its stored Content-Type: the
    type nginx finds must be the stored one (not merely servefiles' own guess, which may
    differ, e.g. for an upload whose type was given), and one that may be published at all.
    An empty file never is: nginx ignores Range on it, so ``bytes=0-`` would get a 200 where
    servefiles answers 416 (RFC 9110 §14.1.1)."""
    return (
        meta.size > 0
        and meta.content_type in allowed
        and nginx_content_type(meta.key, by_extension) == meta.content_type
    )
