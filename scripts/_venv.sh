# Sourced by scripts/serve and scripts/test: make .venv hold servefiles with the
# given extras, reinstalling only when pyproject.toml changed (idempotent, fast).
# Usage: ensure_venv [EXTRAS]
ensure_venv() {
    local extras="${1:-}" spec="." stamp python="${PYTHON:-python3}"
    [ -n "$extras" ] && spec=".[$extras]"
    if [ ! -x .venv/bin/python ]; then
        "$python" -m venv .venv
    fi
    stamp=".venv/.servefiles-installed${extras:+-$extras}"
    if [ ! -f "$stamp" ] || ! cmp -s pyproject.toml "$stamp"; then
        .venv/bin/python -m pip install --quiet --disable-pip-version-check -e "$spec"
        cp pyproject.toml "$stamp"
    fi
}
