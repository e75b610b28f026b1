"""Shared test fixtures: the optional `../shared/` folder and small helpers."""

from __future__ import annotations

import ast
import functools
import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

PROJECT_ROOT = Path(__file__).resolve().parents[1]

# Test modules whose tests train end to end in child processes (train CLI on both backends, JAX multi-process)
# or export real-size models (the documented export claims): wholly in the `large` tier.
LARGE_MODULES = {"test_train_cli.py", "test_export_claims.py"}
# Fixtures that stand for real-size work: a test that asks for one is in the `large` tier.
LARGE_FIXTURES = {"released", "twins"}
# What starting a child process looks like in test code
_CHILD_PROCESS_NAMES = {"subprocess", "multiprocessing", "executable"}


def _names_in(node: ast.AST) -> set[str]:
    names = set()
    for child in ast.walk(node):
        if isinstance(child, ast.Name):
            names.add(child.id)
        elif isinstance(child, ast.Attribute):
            names.add(child.attr)
    return names


def child_process_functions(source: str) -> set[str]:
    """Names of the module-level functions (tests, helpers, fixtures) of a test module that start a child
    process, directly or through another function of the module: their tests go to the `large` tier.

    A fixture counts when a test asks for it by name, so a test whose fixture runs a command is large too.
    """
    functions = {node.name: node for node in ast.parse(source).body
                 if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
    uses = {name: _names_in(node) | {arg.arg for arg in node.args.args} for name, node in functions.items()}
    spawning = {name for name, names in uses.items() if names & _CHILD_PROCESS_NAMES}
    while True:
        grown = spawning | {name for name, names in uses.items() if names & spawning}
        if grown == spawning:
            return spawning
        spawning = grown


@functools.lru_cache(maxsize=None)
def _spawning_in(path: Path) -> frozenset[str]:
    return frozenset(child_process_functions(path.read_text()))


def is_large(item) -> bool:
    """The `large` tier, chosen from what a test uses: a large module, a real-size fixture, or a child
    process (its own code, a helper of its module or a fixture that starts one)."""
    fixtures = set(getattr(item, "fixturenames", ()))
    if item.path.name in LARGE_MODULES or LARGE_FIXTURES & fixtures:
        return True
    if not item.path.name.startswith("test_"):
        return False
    function = getattr(item, "originalname", None) or item.name.split("[")[0]
    return bool(_spawning_in(item.path) & ({function} | fixtures))


# The longest modules of the large tier (JAX multi-process training, real-size exports, crash tests): run first,
# so that under pytest-xdist they overlap with the many short tests instead of forming the run's tail.
LONGEST_FIRST = ("test_train_cli.py", "test_quantization_aware.py", "test_sharded_head.py", "test_export_claims.py",
                 "test_gallery_server.py")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if is_large(item):
            item.add_marker(pytest.mark.large)
    # a stable sort by module rank keeps each module's tests together and in their order (module fixtures)
    rank = {name: index for index, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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
