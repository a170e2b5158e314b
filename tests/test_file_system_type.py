"""Which file system a path is on (servefiles.localfs.file_system_type), from mountinfo."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from servefiles.localfs import file_system_type

MOUNTINFO = """\
22 1 8:1 / / rw,relatime - ext4 /dev/sda1 rw
30 22 0:40 / /srv/files rw,relatime - nfs4 server:/export rw,vers=4.2
31 30 0:41 / /srv/files/with\\040space rw,relatime - tmpfs tmpfs rw
32 22 0:42 / /srv/files2 rw,relatime - xfs /dev/sdb rw
33 22 0:43 / /srv/stacked rw,relatime - ext4 /dev/sdc rw
34 22 0:44 / /srv/stacked rw,relatime shared:5 - fuse.sshfs host: rw
35 22 0:45 / /srv/back\\134slash\\9 rw,relatime - btrfs /dev/sdd rw
"""


@pytest.mark.parametrize(("path", "expected"), [
    ("/srv/files/a/b.png", "nfs4"),
    ("/srv/files", "nfs4"),
    ("/srv/files2/cache", "xfs"),  # a mount point is a whole path segment, not a string prefix
    ("/srv/files/with space/cache", "tmpfs"),  # mountinfo's octal escapes
    ("/srv/stacked/cache", "fuse.sshfs"),  # two mounts on one point: the later one is what is seen
    ("/srv/back\\slash\\9/cache", "btrfs"),  # \\134 is a backslash; a backslash before no octal triple is kept
    ("/var/cache/servefiles", "ext4"),
])  # fmt: skip
def test_the_longest_mount_point_above_a_path_names_its_file_system(tmp_path: Path, path: str, expected: str) -> None:
    mountinfo = tmp_path / "mountinfo"
    mountinfo.write_text(MOUNTINFO)
    assert file_system_type(path, str(mountinfo)) == expected


def test_without_mountinfo_the_type_is_unknown(tmp_path: Path) -> None:
    assert file_system_type(tmp_path, str(tmp_path / "missing")) is None


def test_the_type_is_the_one_df_reports_for_a_real_directory(tmp_path: Path) -> None:
    df = shutil.which("df")
    assert df is not None, "coreutils' df is on every machine this runs on"
    shown = subprocess.run([df, "--output=fstype", str(tmp_path)], capture_output=True, text=True, check=True)
    assert file_system_type(tmp_path) == shown.stdout.split()[-1]
