"""Private folders whose names hold characters nginx's config reader gives a meaning to (a space,
``;``, braces, quotes, ``#``, ``$``, invisible Unicode): ``servefiles nginx-config`` writes their
``^~`` locations quoted, a real nginx accepts the block (``nginx -t``), and in tree mode a file
found in the published tree under such a folder is still never served by nginx unchecked. A prefix
or directory the config cannot hold is refused by the command in one line.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from servefiles import Signer

from .nginx_server import Nginx, nginx_binary, running_nginx, server_block
from .servers import Frontend, cli, free_port

TOKEN = "nginx-quoting-token-0123456789abcdef"
SIGNING_KEY = "nginx-quoting-signing-key-0123456789-abcdefghijklmno"
FOLDERS = ["my docs", "semi;colon", "brace{x}", 'say "hi"', "it's", "hash#tag", "dollar$x", "back`tick",
           "nb\u00a0sp", "zero\u200bwidth"]  # fmt: skip
"""Private folders, each with something nginx would read as syntax outside quotes (or cannot see)."""
DATA = b"\x89PNG\r\n\x1a\n" + os.urandom(4_000)
PLANTED = b"\x89PNG\r\n\x1a\n planted in the tree, never to be served unchecked"


def private_options() -> tuple[str, ...]:
    return tuple(option for folder in FOLDERS for option in ("--private", folder))


def test_private_folders_with_config_syntax_are_quoted_and_nginx_accepts_them(tmp_path: Path) -> None:
    for mode in ("accel", "tree"):
        block = server_block(mode, free_port(), free_port(), tmp_path / "cache", tmp_path / "published",
                             private_options())  # fmt: skip
        locations = [line.strip() for line in block.splitlines() if line.strip().startswith("location ^~ ")]
        if mode == "tree":
            assert len(locations) == len(FOLDERS), block
            assert 'location ^~ "/media/my docs/" {' in locations
            assert 'location ^~ "/media/say \\"hi\\"/" {' in locations
        workdir = tmp_path / f"nginx-{mode}"
        conf = Nginx(workdir, block).conf
        checked = subprocess.run([nginx_binary(), "-t", "-p", str(workdir), "-c", str(conf)], capture_output=True)
        assert checked.returncode == 0, checked.stderr.decode(errors="replace")


def test_a_file_in_the_tree_under_such_a_folder_reaches_servefiles_not_the_client(
    store_url: str, tmp_path: Path
) -> None:
    """Tree mode: nginx tries the published tree before servefiles. A file planted there under each
    private folder (a previous run's, a stray copy) must still reach servefiles, which refuses an
    unsigned request and serves a signed one from the store: the folder's quoted ``^~`` location
    takes the request before ``try_files`` could."""
    cache_dir, publish_dir = tmp_path / "cache", tmp_path / "published"
    frontend = Frontend("--db", store_url, "--cache-dir", str(cache_dir), "--nginx", "tree", "--publish-dir",
                        str(publish_dir), "--upload-token", TOKEN, "--cache-min-uses", "1",
                        "--signing-key", SIGNING_KEY, *private_options()).start()  # fmt: skip
    signer = Signer([SIGNING_KEY], "/media", 7 * 86400)
    try:
        port = free_port()
        block = server_block("tree", frontend.port, port, cache_dir, publish_dir, private_options())
        with running_nginx(tmp_path / "nginx", block, port) as nginx, httpx.Client(
            base_url=f"http://127.0.0.1:{port}", timeout=30
        ) as client:
            auth = {"authorization": f"Bearer {TOKEN}", "content-type": "image/png"}
            assert client.put("/media/public.png", content=DATA, headers=auth).status_code == 201
            for folder in FOLDERS:
                key = f"{folder}/a.png"
                assert client.put(f"/media/{quote(key)}", content=DATA, headers=auth).status_code == 201, folder
                planted = publish_dir / "media" / folder / "planted.png"
                planted.parent.mkdir(parents=True, exist_ok=True)
                planted.write_bytes(PLANTED)
                for target in (f"/media/{quote(folder)}/planted.png", f"/media/{quote(key)}"):
                    refused = client.get(target)
                    assert refused.status_code == 403, (folder, target, refused.status_code)
                    assert PLANTED not in refused.content and DATA[8:40] not in refused.content, folder
                url = signer.url(key, 300, time.time())
                for _ in range(3):  # miss, then hits: each a chance to publish
                    served = client.get(url)
                    assert (served.status_code, served.content) == (200, DATA), folder
                    assert served.headers["cache-control"].startswith("private"), folder
                signed_planted = signer.url(f"{folder}/planted.png", 300, time.time())
                assert client.get(signed_planted).status_code == 404, "servefiles answered: not in the store"
            public = client.get("/media/public.png")
            assert (public.status_code, public.content) == (200, DATA)
            assert "[emerg]" not in nginx.errors() and "[crit]" not in nginx.errors(), nginx.errors()
    finally:
        frontend.stop()
    assert "Traceback" not in frontend.output(), frontend.output()
    published = [str(p.relative_to(publish_dir)) for p in publish_dir.rglob("*.png")]
    assert all(p.endswith("planted.png") or p == "media/public.png" for p in published), published


@pytest.mark.parametrize(
    ("option", "value", "said"),
    [
        ("--publish-dir", "/srv/pub$lished", "'$'"),
        ("--cache-dir", "/srv/cache$dir", "'$'"),
        ("--prefix", "/me\tdia", "control character"),
    ],
)
def test_a_prefix_or_directory_nginx_cannot_hold_is_refused_in_one_line(option: str, value: str, said: str) -> None:
    done = cli("nginx-config", "--mode", "tree", option, value)
    err = done.stderr.decode()
    assert done.returncode == 1 and done.stdout == b"", err
    assert err.startswith("servefiles: error: ") and said in err and err.count("\n") == 1, err


def test_a_prefix_with_config_syntax_is_quoted(tmp_path: Path) -> None:
    block = server_block("tree", free_port(), free_port(), tmp_path / "cache", tmp_path / "pub lished",
                         ("--prefix", "/my files", "--private", "in voices"))  # fmt: skip
    assert 'location "/my files/" {' in block and 'location ^~ "/my files/in voices/" {' in block, block
    assert f'root "{tmp_path / "pub lished"}";' in block, block
    workdir = tmp_path / "nginx"
    conf = Nginx(workdir, block).conf
    checked = subprocess.run([nginx_binary(), "-t", "-p", str(workdir), "-c", str(conf)], capture_output=True)
    assert checked.returncode == 0, checked.stderr.decode(errors="replace")
