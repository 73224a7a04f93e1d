"""Test-session isolation: every run gets its own FiftyOne database, dropped at the end.

FiftyOne reads ``FIFTYONE_DATABASE_NAME`` when it is first imported, so this module sets it
before anything imports fiftyone. Heavy tests (real model architectures on the CPU) carry the
``slow`` marker; ``-m "not slow"`` skips them.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

os.environ["FIFTYONE_DATABASE_NAME"] = f"refseg-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
os.environ.setdefault("FIFTYONE_DO_NOT_TRACK", "true")

import pytest  # noqa: E402


@pytest.fixture(scope="session", autouse=True)
def _isolated_fiftyone_database():
    """Yields, then drops this run's database (only if a test connected to it)."""
    yield
    import sys

    database = sys.modules.get("fiftyone.core.odm.database")
    if database is None or database._client is None:
        return  # this run never connected
    database.get_db_client().drop_database(os.environ["FIFTYONE_DATABASE_NAME"])


@pytest.fixture
def dataset_name(request) -> str:
    """A dataset name unique to the test, deleted afterwards if the test made it."""
    name = f"{request.node.name}-{uuid.uuid4().hex[:6]}"
    yield name
    import fiftyone as fo

    if fo.dataset_exists(name):
        fo.delete_dataset(name)


@pytest.fixture(scope="module")
def installed_plugin(tmp_path_factory) -> Path:
    """A plugins directory holding a symlink to this repository, as a user installs it, set as
    FiftyOne's plugins directory for the module (``pytest.mark.usefixtures`` it)."""
    import fiftyone as fo

    plugins = tmp_path_factory.mktemp("plugins")
    (plugins / "refseg").symlink_to(Path(__file__).resolve().parents[1], target_is_directory=True)
    previous = fo.config.plugins_dir
    fo.config.plugins_dir = str(plugins)
    yield plugins
    fo.config.plugins_dir = previous


@pytest.fixture(scope="module")
def stand_in_models():
    """The stand-ins registered by name for the module (``stand_ins.STAND_IN_MODELS``), removed
    again afterwards."""
    from stand_ins import ShapeProposer, build_palette_encoder

    from refseg.models import ModelEntry, register_model
    from refseg.models.factory import REGISTRY

    entries = [
        ModelEntry("proposer", "shape-proposer", build=lambda *args: ShapeProposer()),
        ModelEntry("encoder", "palette-encoder", build=build_palette_encoder),
    ]
    for entry in entries:
        register_model(entry, overwrite=True)
    yield
    for entry in entries:
        REGISTRY._entries.pop((entry.kind, entry.name), None)
