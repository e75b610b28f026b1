"""Architecture rules of the package, read from the source (imports) and checked in fresh interpreters.

- no import cycles between modules (module-level imports);
- layers: models import nothing of training, data, evaluation or export; data imports no models; evaluation
  and export import no training; the library never imports its command lines (`ghostface_keras.cli`);
- one way for shared jobs: temporary-file renames only in `files.py`, image extensions listed only there, no
  `matplotlib.use`, no private Keras internals;
- light imports: a builder loads no training, evaluation, export or data code, and no pandas/matplotlib of
  ours; every command's `--help` answers without TensorFlow or Keras.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ghostface_keras"
ROOT = PACKAGE.parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}


def _imported(path: Path, module_level_only: bool) -> set[str]:
    """Library modules `path` imports (at module level only, or anywhere, e.g. inside functions)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # `if __name__ == "__main__":` blocks are entry points (`python -m ...`), not imports of the library
    tree.body = [node for node in tree.body if not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found - {_module_name(path)}


def _graph(module_level_only: bool) -> dict[str, set[str]]:
    return {name: _imported(path, module_level_only) for name, path in MODULES.items()}


def _in(module: str, *prefixes: str) -> bool:
    """`module` is one of `prefixes` or inside one of them (the root package itself contains nothing)."""
    return any(module == prefix or (prefix != "ghostface_keras" and module.startswith(prefix + "."))
               for prefix in prefixes)


def test_no_import_cycles_between_modules():
    graph = _graph(module_level_only=True)
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module)
    assert len(graph) > 40  # the walk really saw the package


TRAINING = ("ghostface_keras.training", "ghostface_keras.recipes", "ghostface_keras.callbacks",
            "ghostface_keras.optimizers", "ghostface_keras.partial_fc", "ghostface_keras.schedules")
MODELS = ("ghostface_keras.models", "ghostface_keras.blocks")


@pytest.mark.parametrize("layer, forbidden", [
    (MODELS, TRAINING + ("ghostface_keras.data", "ghostface_keras.evaluation", "ghostface_keras.export")),
    (("ghostface_keras.data",), MODELS + ("ghostface_keras.registry",)),
    (("ghostface_keras.evaluation", "ghostface_keras.export"), TRAINING),
    (tuple(name for name in MODULES if not _in(name, "ghostface_keras.cli") and not name.endswith("__main__")),
     ("ghostface_keras.cli",)),
])
def test_layers_import_only_downwards(layer, forbidden):
    graph = _graph(module_level_only=False)  # lazy imports inside functions count too
    broken = sorted(f"{module} imports {target}" for module, targets in graph.items()
                    if _in(module, *layer) and not module.endswith(".__main__")  # entry points, like the CLIs
                    for target in targets if _in(target, *forbidden))
    assert broken == []


def _source_lines(pattern: str, allowed: tuple[str, ...] = ()) -> list[str]:
    hits = []
    for name, path in MODULES.items():
        if name in allowed:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if pattern in code and not code.lstrip().startswith(">>>"):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    return hits


@pytest.mark.parametrize("pattern, allowed", [
    ("os.replace(", ("ghostface_keras.files",)),        # one atomic writer
    ("os.rename(", ("ghostface_keras.files",)),
    ("mkstemp(", ()),                                    # would create 0600 files, ignoring the umask
    ("IMAGE_SUFFIXES", ()),                              # one list of image extensions ...
    ("IMAGE_EXTENSIONS = ", ("ghostface_keras.files",)),  # ... defined once
    ("matplotlib.use(", ()),                             # plots never switch the caller's backend
    ("keras.src", ()),                                   # public Keras API only
    ("_loss_tracker", ()),
    ("_compute_loss", ()),
    ("def list_images", ("ghostface_keras.files", "ghostface_keras.export.images")),
    ("def l2_normalize", ("ghostface_keras.numeric", "ghostface_keras.heads")),  # heads: the in-graph one
    ("def markdown_table", ("ghostface_keras.tables",)),
])
def test_one_way_for_shared_jobs(pattern, allowed):
    assert _source_lines(pattern, allowed) == []


def _fresh_interpreter(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["face", "train", "evaluate", "export", "zoo", "convert", "watch", "serve"])
def test_help_of_every_command_imports_no_tensorflow(command):
    loaded = _fresh_interpreter(
        "import contextlib, io, json, sys\n"
        f"from ghostface_keras.cli import {command} as cli\n"
        "out = io.StringIO()\n"
        "with contextlib.redirect_stdout(out), contextlib.suppress(SystemExit):\n"
        "    cli.main(['--help'])\n"
        "print(json.dumps({'help': len(out.getvalue()), 'modules': [m for m in ('tensorflow', 'keras', 'jax',"
        " 'pandas', 'matplotlib') if m in sys.modules]}))")
    assert loaded["help"] > 100 and loaded["modules"] == []


def test_a_builder_loads_only_model_code():
    loaded = _fresh_interpreter(
        "import json, sys\n"
        "import ghostface_keras\n"
        "model = ghostface_keras.GhostFaceNetV1(width=0.5)\n"
        "ours = sorted(m for m in sys.modules if m.startswith('ghostface_keras'))\n"
        "print(json.dumps({'params': model.count_params(), 'ours': ours}))")
    assert loaded["params"] > 0
    heavy = [name for name in loaded["ours"] if _in(name, *TRAINING, "ghostface_keras.data", "ghostface_keras.export",
                                                   "ghostface_keras.evaluation", "ghostface_keras.inference",
                                                   "ghostface_keras.align", "ghostface_keras.cli")]
    assert heavy == []


def test_library_code_imports_pandas_and_matplotlib_only_inside_functions():
    """Keras 3 itself imports pandas and matplotlib when they are installed; our modules add neither at import."""
    offenders = []
    for name, path in MODULES.items():
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            imported = ([alias.name for alias in node.names] if isinstance(node, ast.Import)
                        else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{name}: {module}" for module in imported if module.split(".")[0] in ("pandas",
                                                                                                  "matplotlib")]
    assert offenders == []


def test_plain_keras_loads_our_files_after_import_ghostface_keras(tmp_path):
    """The lazy API still registers our Keras objects (V1 hard sigmoid, NormDense) once Keras is imported."""
    import ghostface_keras

    path = tmp_path / "v1.keras"
    ghostface_keras.GhostFaceNetV1(width=0.5, input_shape=(64, 64, 3)).save(path)
    for imports in ("import ghostface_keras, keras", "import keras, ghostface_keras"):
        loaded = _fresh_interpreter(
            f"{imports}\nimport json\n"
            f"model = keras.saving.load_model({str(path)!r})\n"
            "print(json.dumps({'layers': len(model.layers), 'gate': model.get_layer('stack4_se_gate').activation.__name__}))")
        assert loaded["layers"] > 100 and loaded["gate"] == "hard_sigmoid_keras2"
