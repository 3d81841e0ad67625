"""The shape of the package, read from its source: no import cycle, imports point down the layers,
and no file grows past what one reader holds in mind."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("configs", "utils", "datasets", "models", "core")
# Layers, bottom first: a module may import its own layer and the layers below, never above. The
# config error sits under the configs (everything may raise it); in core, the config gate, the
# loaders and the weight loading sit under evaluation, training (it validates) and deployment (QAT
# trains, export reads the val images), and the task functions on top.
LAYERS = [("configs.errors",), ("configs",), ("utils",), ("datasets", "models"),
          ("core", "core.checks", "core.loaders", "core.weights"), ("core.evaluation",), ("core.train",),
          ("core.deploy",), ("core.tasks",), ("main",)]
MAX_LINES = 400


def modules() -> dict[str, Path]:
    """Dotted name -> file of every module of the package (and main)."""
    found = {"main": REPO / "main.py"}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The package modules ``path`` imports anywhere in its body (function-level imports too: they
    are how cycles hide)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        out |= {n for n in names if n in known}
    return out


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def layer(module: str) -> int:
    """Index in LAYERS of the most specific prefix of ``module``."""
    best, rank = -1, -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > best:
                best, rank = len(p), i
    return rank


def test_no_import_cycle():
    found = cycles(graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_imports_point_down_the_layers():
    up = sorted(f"{a} -> {b}" for a, deps in graph().items() for b in deps if layer(b) > layer(a))
    assert not up, "imports of a higher layer:\n" + "\n".join(up)


def test_configs_import_nothing_of_the_repo_but_configs():
    g = graph()
    assert not {b for a, deps in g.items() if a.startswith("configs") for b in deps if not b.startswith("configs")}


def test_no_source_file_over_the_limit():
    long = {str(p.relative_to(REPO)): n for p in [*modules().values(), *(REPO / "tests").rglob("*.py")]
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_checker_finds_a_cycle_and_an_upward_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert layer("core.deploy.export") > layer("core.train.step") > layer("core.evaluation.evaluator")
    assert layer("core.tasks") > layer("core.deploy.qat") and layer("models.priors") > layer("utils.boxes")
