"""Architecture rules of the package, read from the source (imports) and checked in fresh interpreters.

- layers, bottom to top (`LAYERS`): a module imports only modules of its own layer or of layers below it, over the
  whole import graph: module-level and lazy (in-function) imports, relative imports and `importlib.import_module`
  of a literal name all count; `if __name__ == "__main__":` blocks are entry points and do not;
- no import cycles at all, lazy imports included;
- data imports no model code (a pipeline feeds any model);
- one way for shared jobs: temporary-file renames only in `core/files.py`, image extensions listed only there,
  no `matplotlib.use`, no private Keras internals;
- light imports: a builder loads no training logic, evaluation, export or data code; every command's `--help`
  answers without TensorFlow or Keras;
- every Keras-serializable object of ours is registered as soon as Keras is imported.
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

# bottom to top; `ghostface_keras/__init__.py` (the lazy public API) and `_compat.py` (0.1 paths) stand above all
LAYERS = ("core", "weights", "models", "data", "runtime", "gallery", "faces", "evaluation", "export", "train", "serve",
          "cli")
TOP = ("ghostface_keras", "ghostface_keras._compat")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
# `python -m` entry points (`export/__main__.py`) are command lines: they stand at the top with the CLIs
TOP += tuple(name for name in MODULES if name.endswith(".__main__"))


def _imported(path: Path, module_level_only: bool = False) -> set[str]:
    """Library modules `path` imports (at module level only, or anywhere: inside functions too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # `if __name__ == "__main__":` blocks are entry points (`python -m ...`), not imports of the library
    tree.body = [node for node in tree.body if not (isinstance(node, ast.If) and "__main__" in ast.unparse(node.test))]
    me = _module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    names: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import: resolve against this module's package
                anchor = package
                for _ in range(node.level - 1):
                    anchor = anchor.rpartition(".")[0]
                base = f"{anchor}.{base}" if base else anchor
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            names.add(node.args[0].value)
    found = set()
    for name in names:
        while name and name not in MODULES:
            name = name.rpartition(".")[0]
        if name:
            found.add(name)
    return found - {me}


def _graph(module_level_only: bool = False) -> dict[str, set[str]]:
    return {name: _imported(path, module_level_only) for name, path in MODULES.items()}


def _layer(module: str) -> int | None:
    """Index of `module`'s layer in LAYERS (None for the top: the root package and _compat)."""
    if module in TOP:
        return None
    return LAYERS.index(module.split(".")[1])


def _in(module: str, *prefixes: str) -> bool:
    """`module` is one of `prefixes` or inside one of them."""
    return any(module == prefix or module.startswith(prefix + ".") for prefix in prefixes)


def test_every_module_belongs_to_a_layer():
    unplaced = [name for name in MODULES if name not in TOP and name.split(".")[1] not in LAYERS]
    assert unplaced == []
    assert len(MODULES) > 80  # the walk really saw the package


def test_no_layer_imports_a_higher_one():
    graph = _graph()
    broken = sorted(f"{module} ({LAYERS[_layer(module)]}) imports {target} ({LAYERS[_layer(target)]})"
                    for module, targets in graph.items() if module not in TOP
                    for target in targets if target not in TOP and _layer(target) > _layer(module))
    assert broken == []
    # and nothing below the top imports the lazy root API or the 0.1 aliases
    assert sorted(f"{module} imports {target}" for module, targets in graph.items() if module not in TOP
                  for target in targets if target in TOP) == []


def test_no_import_cycles_at_all():
    """Lazy imports included: a cycle through a function-level import is still a cycle of concerns."""
    graph = _graph()
    state: dict[str, int] = {}
    path: list[str] = []
    cycles = []

    def visit(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(graph[module]):
            if state.get(target) == 1:
                cycles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target)
        path.pop()
        state[module] = 2

    for module in sorted(graph):
        if module not in state and module not in TOP:
            visit(module)
    assert cycles == []


def test_the_rules_catch_what_they_claim(tmp_path):
    """The graph reader sees lazy, relative and import_module imports (so the two tests above can fail)."""
    source = ("def f():\n    from ..faces import embedder\n"
              "def g():\n    import importlib\n    importlib.import_module('ghostface_keras.train.trainer')\n")
    fake = tmp_path / "ghostface_keras" / "core" / "probe.py"
    fake.parent.mkdir(parents=True)
    fake.write_text(source)
    tree_root = ROOT
    try:
        globals()["ROOT"] = tmp_path
        found = _imported(fake)
    finally:
        globals()["ROOT"] = tree_root
    assert found == {"ghostface_keras.faces", "ghostface_keras.faces.embedder", "ghostface_keras.train.trainer"}


def test_data_imports_no_model_code():
    graph = _graph()
    assert sorted(f"{module} imports {target}" for module, targets in graph.items() if _in(module, "ghostface_keras.data")
                  for target in targets if _in(target, "ghostface_keras.models", "ghostface_keras.weights")) == []


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
    ("os.replace(", ("ghostface_keras.core.files",)),        # one atomic writer
    ("os.rename(", ("ghostface_keras.core.files",)),
    ("mkstemp(", ()),                                    # would create 0600 files, ignoring the umask
    ("IMAGE_SUFFIXES", ()),                              # one list of image extensions ...
    ("IMAGE_EXTENSIONS = ", ("ghostface_keras.core.files",)),  # ... defined once
    ("matplotlib.use(", ()),                             # plots never switch the caller's backend
    ("keras.src", ()),                                   # public Keras API only
    ("_loss_tracker", ()),
    ("_compute_loss", ()),
    ("def list_images", ("ghostface_keras.core.files", "ghostface_keras.export.images")),
    ("def l2_normalize", ("ghostface_keras.core.numeric", "ghostface_keras.train.heads")),  # heads: the in-graph one
    ("def markdown_table", ("ghostface_keras.core.tables",)),
])
def test_one_way_for_shared_jobs(pattern, allowed):
    assert _source_lines(pattern, allowed) == []


def _fresh_interpreter(code: str) -> dict:
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300,
                            env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("command", ["face", "train", "evaluate", "export", "zoo", "convert", "watch", "serve",
                                     "gallery"])
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
    """Model code, plus the modules whose Keras objects are registered when Keras is imported (light: Keras
    and numpy only), and nothing else: no trainer, data, evaluation, runtime, faces or export machinery."""
    import ghostface_keras

    loaded = _fresh_interpreter(
        "import json, sys\n"
        "import ghostface_keras\n"
        "model = ghostface_keras.GhostFaceNetV1(width=0.5)\n"
        "ours = sorted(m for m in sys.modules if m.startswith('ghostface_keras'))\n"
        "print(json.dumps({'params': model.count_params(), 'ours': ours}))")
    assert loaded["params"] > 0
    registered = set(ghostface_keras._SERIALIZABLE_MODULES)
    module_level = _graph(module_level_only=True)
    allowed = registered | {target for module in registered for target in module_level[module]}
    allowed |= {name.rpartition(".")[0] for name in allowed}  # their packages' (docstring-only) __init__s
    unexpected = [name for name in loaded["ours"] if name not in allowed and name not in TOP
                  and not _in(name, "ghostface_keras.core", "ghostface_keras.weights", "ghostface_keras.models")]
    assert unexpected == []
    assert "ghostface_keras.train.trainer" not in loaded["ours"] and "ghostface_keras.data" not in loaded["ours"]


def test_every_serializable_object_is_registered_when_keras_is_imported():
    """Plain `keras.saving.load_model` finds every object we register, whatever imported Keras first."""
    import ghostface_keras

    declaring = sorted(name for name, path in MODULES.items()
                       if "register_keras_serializable" in path.read_text(encoding="utf-8") and name not in TOP)
    assert set(declaring) == set(ghostface_keras._SERIALIZABLE_MODULES)
    classes = sorted({f"ghostface_keras>{node.name}" for name in declaring
                      for node in ast.walk(ast.parse(MODULES[name].read_text(encoding="utf-8")))
                      if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and any(
                          "register_keras_serializable" in ast.unparse(d) for d in node.decorator_list)})
    assert len(classes) > 10
    for imports in ("import ghostface_keras, keras", "import keras, ghostface_keras"):
        loaded = _fresh_interpreter(f"{imports}\nimport json\n"
                                    "print(json.dumps(sorted(keras.saving.get_custom_objects())))")
        assert [name for name in classes if name not in loaded] == []


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


def test_the_old_module_paths_still_import_as_deprecated_aliases():
    """0.1 paths keep working for one release: a moved module is the same object, a split one finds each name."""
    import importlib

    import ghostface_keras._compat as compat

    with pytest.warns(DeprecationWarning, match="ghostface_keras.loading moved to ghostface_keras.runtime.loading"):
        old = importlib.import_module("ghostface_keras.loading")
    assert old is importlib.import_module("ghostface_keras.runtime.loading")
    from ghostface_keras.align import MTCNNDetector, align_face, get_detector, load_rgb_image  # a split module
    from ghostface_keras.faces.alignment import align_face as new_align_face
    from ghostface_keras.faces.detectors import get_detector as new_get_detector
    from ghostface_keras.faces.mtcnn import MTCNNDetector as NewMTCNN

    assert (MTCNNDetector, align_face, get_detector) == (NewMTCNN, new_align_face, new_get_detector)
    assert load_rgb_image is importlib.import_module("ghostface_keras.core.images").load_rgb_image
    with pytest.raises(ImportError):
        from ghostface_keras.align import no_such_name  # noqa: F401
    homes = {home for targets in compat.MOVED.values() for home in targets}
    assert sorted(home for home in homes if home not in MODULES) == []  # every alias points at a real module
    assert sorted(old for old in compat.MOVED if old in MODULES) == []  # and no old path still exists as a file
