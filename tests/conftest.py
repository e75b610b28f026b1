"""Shared test fixtures: the optional `../shared/` folder and small helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Test modules whose tests train end to end in child processes (train CLI on both backends, JAX multi-process)
# or export real-size models (the documented export claims): the `large` tier, 1,137 of the default suite's
# 1,819 test-seconds at 66a89ae. Nothing in them is dropped: .ci/run runs this tier on every submission.
LARGE_MODULES = {"test_train_cli.py", "test_export_claims.py"}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.path.name in LARGE_MODULES:
            item.add_marker(pytest.mark.large)


def _shared_dir() -> Path | None:
    configured = os.environ.get("GHOSTFACE_SHARED")
    candidate = Path(configured) if configured else PROJECT_ROOT.parent / "shared"
    return candidate if candidate.is_dir() else None


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """`../shared` beside the checkout (or $GHOSTFACE_SHARED); tests using it skip when absent."""
    path = _shared_dir()
    if path is None:
        pytest.skip("../shared is not available")
    return path


@pytest.fixture(scope="session")
def reference_dir(shared_dir: Path) -> Path:
    """The official fixtures: `shared/reference/official/<variant>/`."""
    path = shared_dir / "reference" / "official"
    if not path.is_dir():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="session")
def data_dir(shared_dir: Path) -> Path:
    """Real third-party face data: `shared/data/`."""
    path = shared_dir / "data"
    if not path.is_dir():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="session")
def released(data_dir: Path) -> Path:
    """The officially released GhostFaceNetV1-0.5-2 checkpoint (`GN_W0.5_S2_ArcFace_epoch16.h5`)."""
    path = data_dir / "ghostfacenets_pretrained" / "GN_W0.5_S2_ArcFace_epoch16.h5"
    if not path.exists():
        pytest.skip(f"{path} is not available")
    return path


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
    """JAX child processes of one test session share their compiled programs through JAX's persistent cache:
    the first run of a train step compiles it (~20 s on 2 cores), later runs of the same step load it."""
    settings = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path_factory.mktemp("jax_cache")),
                "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    previous = {key: os.environ.get(key) for key in settings}
    for key, value in settings.items():
        os.environ.setdefault(key, value)
    yield
    for key, value in previous.items():
        if value is None:
            os.environ.pop(key, None)
