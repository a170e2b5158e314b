"""``deploy/``: the systemd unit passes ``systemd-analyze verify`` and keeps its hardening, the example
config is one ``serve`` accepts, and the committed nginx include is exactly what ``servefiles nginx-config``
prints for the documented options (so it cannot drift from the generator), and nginx accepts it.

``systemd-analyze`` reads unit files offline: no systemd needs to run (this container's PID 1 is not
systemd). ``scripts/install-systemd`` installs it when it is missing; with CI=true a missing one fails.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from .nginx_server import nginx_binary, nginx_conf
from .servers import cli
from .tools import installed

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "servefiles.service"
INSTALLED_COMMAND = "/opt/servefiles/bin/servefiles"
NGINX_OPTIONS = ["--config", "deploy/servefiles.toml", "--mode", "tree", "--server-name", "files.example.com"]
"""How deploy/nginx-servefiles.conf is generated (the README's Deploy section shows the same command)."""
MAX_EXPOSURE = 2.0
"""``systemd-analyze security``'s exposure score the unit must stay under (0 best, 10 worst; 1.6 now)."""


def systemd_analyze() -> str:
    return installed("systemd-analyze", "install-systemd")


def unit_as_installed_here(tmp_path: Path) -> Path:
    """The unit with its one machine-specific path, the installed command, pointed at this environment's
    (verify checks that ExecStart's program exists); every other line as committed."""
    text = UNIT.read_text()
    assert text.count(INSTALLED_COMMAND) == 1
    here = tmp_path / UNIT.name
    here.write_text(text.replace(INSTALLED_COMMAND, str(Path(sys.executable).parent / "servefiles")))
    return here


def test_the_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    checked = subprocess.run([systemd_analyze(), "verify", str(unit_as_installed_here(tmp_path))],
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0 and not checked.stderr.strip() and not checked.stdout.strip(), checked


def test_the_unit_restarts_always_and_stays_hardened(tmp_path: Path) -> None:
    text = UNIT.read_text()
    settings = {line.split("=", 1)[0]: line.split("=", 1)[1] for line in text.splitlines()
                if re.match(r"^[A-Za-z]+=", line)}  # fmt: skip
    assert settings["Restart"] == "always"  # tree mode: a killed frontend's tree waits for the next start
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert settings["User"] == settings["Group"] == "servefiles"
    assert settings["ReadWritePaths"] == "/var/cache/servefiles"
    config = tomllib.loads((DEPLOY / "servefiles.toml").read_text())
    for directory in (config["cache-dir"], config["publish-dir"]):  # writable, under the one writable path
        assert Path(directory).is_relative_to(settings["ReadWritePaths"])
    assert "--config /etc/servefiles/servefiles.toml" in text

    scored = subprocess.run([systemd_analyze(), "security", "--offline=yes", str(unit_as_installed_here(tmp_path))],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", scored.stdout)
    assert found, scored.stdout + scored.stderr
    assert float(found.group(1)) <= MAX_EXPOSURE, scored.stdout


def test_the_example_config_is_one_serve_accepts() -> None:
    shown = cli("config", "--config", str(DEPLOY / "servefiles.toml"))
    assert shown.returncode == 0, shown.stderr
    values = tomllib.loads(shown.stdout.decode())
    assert values["nginx"] == "tree" and values["log-format"] == "json" and values["port"] == 8000


def test_the_committed_nginx_include_is_what_nginx_config_prints() -> None:
    clean = {name: value for name, value in os.environ.items() if not name.startswith("SERVEFILES_")}
    printed = subprocess.run([sys.executable, "-m", "servefiles", "nginx-config", *NGINX_OPTIONS], cwd=ROOT, env=clean,
                             capture_output=True, text=True, timeout=60)  # fmt: skip
    assert printed.returncode == 0, printed.stderr
    committed = (DEPLOY / "nginx-servefiles.conf").read_text()
    assert printed.stdout == committed, "regenerate: servefiles nginx-config " + " ".join(NGINX_OPTIONS)
    assert "servefiles nginx-config " + " ".join(NGINX_OPTIONS) in (ROOT / "README.md").read_text()


def test_nginx_accepts_the_committed_include(tmp_path: Path) -> None:
    conf = tmp_path / "nginx.conf"
    conf.write_text(nginx_conf(tmp_path, (DEPLOY / "nginx-servefiles.conf").read_text()))
    checked = subprocess.run([nginx_binary(), "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
    assert checked.returncode == 0, checked.stderr
