"""The house's import rules: no cycles, imports go one way, a light `import keras_condensa`.

The import graph is read from the source (the AST of every module, imports
inside functions included), so these tests need no TensorFlow and run in well
under a second; one subprocess checks what `import keras_condensa` really loads.
"""

import ast
import json
import os
import subprocess
import sys
from importlib.util import find_spec

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("keras_condensa", "tflite_export")
MAX_MODULE_LINES = 500

# The application layer: it may import anything. Everything else in keras_condensa is the core.
APPLICATION = (
    "keras_condensa.cli",
    "keras_condensa.demo",
    "keras_condensa.bench",
    "keras_condensa.report",  # a search's report.md, pareto.png, trials.csv
)
APPLICATION_PACKAGES = ("keras_condensa.search", "keras_condensa.workflows")
# What the core never imports.
FORBIDDEN_IN_CORE = (
    "keras_condensa.search",
    "keras_condensa.cli",
    "keras_condensa.demo",
    "keras_condensa.workflows",
    "tflite_export",
)


def _module_files():
    """{module name: path} for every module of the packages."""
    modules = {}
    for package in PACKAGES:
        for directory, _, files in os.walk(os.path.join(ROOT, package)):
            for file in sorted(files):
                if not file.endswith(".py"):
                    continue
                path = os.path.join(directory, file)
                parts = os.path.relpath(path, ROOT)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


MODULES = _module_files()


def _is_package(module):
    return MODULES[module].endswith("__init__.py")


def _known(name):
    """The longest prefix of `name` that is one of our modules, or `name` itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in MODULES:
            return prefix
    return name


def _resolve_from(module, node):
    """Modules imported by a `from ... import ...` statement in `module`."""
    if node.level:
        package = module if _is_package(module) else module.rpartition(".")[0]
        for _ in range(node.level - 1):
            package = package.rpartition(".")[0]
        base = f"{package}.{node.module}" if node.module else package
    else:
        base = node.module
    targets = []
    for alias in node.names:
        submodule = f"{base}.{alias.name}"
        # `from package import submodule` imports the submodule; `from module import name`
        # imports the module.
        targets.append(submodule if submodule in MODULES else _known(base))
    return targets


def _is_type_checking(node):
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(module):
    """[(imported module, line)] for every import in `module`, at any depth.

    Covers `import a.b`, `from a import b`, relative imports and
    `importlib.import_module("a.b")` / `__import__("a.b")` with a literal name;
    skips `if TYPE_CHECKING:` blocks (they never run).
    """
    with open(MODULES[module], encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename=MODULES[module])
    found = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.extend((_known(alias.name), node.lineno) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.extend((target, node.lineno) for target in _resolve_from(module, node))
        elif (
            isinstance(node, ast.Call)
            and (
                (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
                or (isinstance(node.func, ast.Name) and node.func.id == "__import__")
            )
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.append((_known(node.args[0].value), node.lineno))
        stack.extend(ast.iter_child_nodes(node))
    return sorted(set(found), key=lambda item: item[1])


def _graph():
    """{module: {imported module of ours: first line}}."""
    graph = {}
    for module in MODULES:
        edges = {}
        for target, line in _imports(module):
            if target in MODULES and target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def _where(module, line):
    return f"{os.path.relpath(MODULES[module], ROOT)}:{line}"


def _strongly_connected(graph):
    """Tarjan's strongly connected components (iterative)."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def _shortest_cycle(graph, component):
    """One shortest cycle through the component's first module, as a list of modules."""
    members = set(component)
    start = component[0]
    parents, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while parents[path[-1]] is not None:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if child in members and child not in parents:
                    parents[child] = node
                    following.append(child)
        frontier = following
    raise AssertionError(f"no cycle through {start}")  # pragma: no cover - Tarjan found one


def _describe_cycle(graph, cycle):
    steps = [
        f"    {a} -> {b}  ({_where(a, graph[a][b])})"
        for a, b in zip(cycle, cycle[1:], strict=False)
    ]
    return "\n".join(steps)


def _is_core(module):
    if not _matches(module, "keras_condensa") or module in APPLICATION:
        return False
    return not any(
        _matches(module, prefix) for prefix in ("keras_condensa.cli", *APPLICATION_PACKAGES)
    )


def _matches(target, prefix):
    if prefix == "keras_condensa.cli":  # the command line and its helpers (cli_checks, ...)
        return target.startswith(prefix)
    return target == prefix or target.startswith(prefix + ".")


def test_module_names_are_found():
    # Guards the walk itself: a broken walk would make every rule below pass vacuously.
    assert "keras_condensa" in MODULES and "tflite_export" in MODULES
    assert "keras_condensa.wrappers" in MODULES and "tflite_export.convert" in MODULES
    graph = _graph()
    assert "keras_condensa.wrappers" in graph["keras_condensa"]


def test_import_graph_has_no_cycles():
    graph = _graph()
    # Self-imports are left out of the graph, so a cycle is a component of two or more.
    cycles = [component for component in _strongly_connected(graph) if len(component) > 1]
    report = []
    for component in cycles:
        report.append(f"  cycle among {', '.join(component)}:")
        report.append(_describe_cycle(graph, _shortest_cycle(graph, component)))
        inside = [
            f"    {a} -> {b}  ({_where(a, line)})"
            for a in component
            for b, line in sorted(graph[a].items())
            if b in component
        ]
        if len(inside) > len(component):
            report.append("   all imports inside it:")
            report.extend(inside)
    assert not cycles, "Import cycles (imports inside functions included):\n" + "\n".join(report)


def test_imports_go_one_way():
    violations = []
    for module in sorted(MODULES):
        for target, line in _imports(module):
            if _is_core(module):
                forbidden = FORBIDDEN_IN_CORE
            elif module.startswith("tflite_export"):
                forbidden = ("keras_condensa",)
            else:
                continue
            if any(_matches(target, prefix) for prefix in forbidden):
                violations.append(f"  {_where(module, line)}: {module} imports {target}")
    assert not violations, (
        "The core (keras_condensa outside cli*, demo, bench, search/, workflows/) must not import "
        "the application layer or tflite_export, and tflite_export must not import "
        "keras_condensa:\n" + "\n".join(violations)
    )


def test_modules_stay_under_the_size_limit():
    oversized = []
    for path in sorted(MODULES.values()):
        with open(path, encoding="utf-8") as f:
            lines = sum(1 for _ in f)
        if lines > MAX_MODULE_LINES:
            oversized.append(f"  {os.path.relpath(path, ROOT)}: {lines} lines")
    assert not oversized, (
        f"Modules over {MAX_MODULE_LINES} lines (split them, one concept per module):\n"
        + "\n".join(oversized)
    )


_IMPORT_SCRIPT = """
import json, sys
heavy = ("tensorflow", "keras_tuner", "ai_edge_litert")
import keras_condensa
after_core = [m for m in heavy if m in sys.modules]
import tflite_export
after_export = [m for m in heavy if m in sys.modules]
listed = "search" in dir(keras_condensa) and "search" in keras_condensa.__all__
# A missing optional dependency (None in sys.modules blocks its import) names the extra.
sys.modules["keras_tuner"] = None
try:
    keras_condensa.search
    search_error = None
except ImportError as error:
    search_error = str(error)
sys.modules["tensorflow"] = None
try:
    import tflite_export.converter
    export_error = None
except ImportError as error:
    export_error = str(error)
print(json.dumps([after_core, after_export, listed, search_error, export_error]))
"""


@pytest.mark.skipif(find_spec("jax") is None, reason="needs the JAX backend installed")
def test_import_under_jax_loads_neither_tensorflow_nor_keras_tuner():
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    process = subprocess.run(
        [sys.executable, "-c", _IMPORT_SCRIPT],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert process.returncode == 0, process.stderr[-3000:]
    after_core, after_export, listed, search_error, export_error = json.loads(
        process.stdout.strip().splitlines()[-1]
    )
    assert after_core == [], f"`import keras_condensa` under JAX imported {after_core}"
    assert after_export == [], f"`import tflite_export` under JAX imported {after_export}"
    assert listed, "kc.search must stay listed in dir(keras_condensa) and __all__"
    assert search_error and "pip install 'keras-condensa[search]'" in search_error
    assert "keras-tuner" in search_error
    assert export_error and "pip install 'keras-condensa[export]'" in export_error
    assert "tensorflow" in export_error


CUSTOM_LAYER_MODULE = """
import keras


@keras.saving.register_keras_serializable(package="tflite_export_test")
class Scale(keras.layers.Layer):
    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, x):
        return x * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


def test_export_worker_imports_the_modules_of_the_models_custom_layers(tmp_path, monkeypatch):
    """tflite_export names no library: the model says which modules define its classes."""
    import keras
    import numpy as np

    import tflite_export as te
    from tflite_export import models, subprocess_export

    name = "tflite_export_custom_layer_for_test"
    (tmp_path / f"{name}.py").write_text(CUSTOM_LAYER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH")) if p)
    )
    custom = __import__(name)
    keras.utils.set_random_seed(0)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, custom.Scale(3.0)(keras.layers.Dense(4)(inputs)))
    assert models.custom_object_modules(model) == [name]
    # The worker is a fresh TensorFlow-backend process: without importing `name` it could
    # not load the model's `.keras` file.
    options = (None, None, True, False, False, "default")
    result = subprocess_export.export_in_subprocess(model, str(tmp_path / "m.tflite"), *options)
    x = np.random.default_rng(0).random((8, 8), dtype="float32")
    assert te.verify(result, model, x).max_abs_error <= 1e-5
