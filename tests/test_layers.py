"""The package's layering, checked statically: every ``gradproj/**/*.py`` is parsed with ``ast``
(nothing is imported), and every import counts, at module level, inside a function or under
``if TYPE_CHECKING``.

(a) no module uses a private name (``_x``; dunders such as ``__version__`` are public) of
    another gradproj module: ``from M import _x``, ``M._x``, ``getattr(M, "_x")``, or a private
    module ``P._m`` from outside package P;
(b) no import cycle between gradproj modules: every edge inside a strongly connected
    component of the import graph is reported, with its importing line and the path back;
(c) a layer imports only its own and lower layers, in the order of ``LAYERS``; the top-level
    ``gradproj/__init__.py`` (which may re-export the public API) and ``__main__.py`` are
    exempt, and a module in no layer is itself a violation.

``benchmarks/*.py`` are held to (a). Violations are reported per layer, as ``file:line: what``.
"""

from __future__ import annotations

import ast
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "gradproj"
LAYERS = ("core", "training", "gradients", "store", "attribution", "pipeline", "experiments",
          "cli")
EXEMPT = ("gradproj", "gradproj.__main__")
TOP = "(top level)"   # the pseudo-layer of the exempt and of unlayered modules


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


@dataclass(frozen=True)
class Violation:
    rule: str        # "private", "cycle", "layer"
    path: str        # file relative to the root
    line: int
    module: str      # the offending (importing) module; "" outside the package
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


@dataclass
class Graph:
    """Modules of a package (dotted name → file) and their import edges."""

    root: Path
    modules: dict[str, Path]
    edges: dict[str, dict[str, int]] = field(default_factory=dict)   # src → {dst: first line}

    def rel(self, module: str) -> str:
        return self.modules[module].relative_to(self.root).as_posix()


def find_modules(root: Path, package: str) -> dict[str, Path]:
    out = {}
    for f in sorted((root / package).rglob("*.py")):
        parts = f.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def _dotted(node: ast.AST) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _dotted(node.value)
        return None if base is None else f"{base}.{node.attr}"
    return None


class _FileScan:
    """Imports and private uses of one file. ``module`` is its dotted name (None outside the
    package: benchmarks), ``is_pkg`` whether it is an ``__init__.py``."""

    def __init__(self, path: Path, rel: str, module: str | None, is_pkg: bool, package: str,
                 modules: dict[str, Path]) -> None:
        self.rel, self.module, self.is_pkg = rel, module, is_pkg
        self.package, self.modules = package, modules
        self.edges: list[tuple[str, int]] = []          # (imported module, line)
        self.violations: list[Violation] = []
        self.aliases: dict[str, str] = {}               # local name → gradproj module
        self.tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))

    def run(self) -> _FileScan:
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Import):
                self._import(node)
            elif isinstance(node, ast.ImportFrom):
                self._import_from(node)
        for node in ast.walk(self.tree):
            if isinstance(node, ast.Attribute) and is_private(node.attr):
                target = self._as_module(node.value)
                if target is not None:
                    self._private(node.lineno, f"uses private name {target}.{node.attr}")
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                  and node.func.id in ("getattr", "hasattr", "setattr") and len(node.args) >= 2
                  and isinstance(node.args[1], ast.Constant)
                  and isinstance(node.args[1].value, str) and is_private(node.args[1].value)):
                target = self._as_module(node.args[0])
                if target is not None:
                    self._private(node.lineno, f"uses private name {target}."
                                  f"{node.args[1].value} via {node.func.id}()")
        return self

    # -- helpers
    def _ours(self, name: str) -> bool:
        return name == self.package or name.startswith(self.package + ".")

    def _known(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is a module of the package."""
        parts = dotted.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.modules:
                return ".".join(parts[:n])
        return None

    def _as_module(self, node: ast.AST) -> str | None:
        dotted = _dotted(node)
        if dotted is None:
            return None
        head, _, rest = dotted.partition(".")
        if head not in self.aliases:
            return None
        full = self.aliases[head] + ("." + rest if rest else "")
        return full if full in self.modules and full != self.module else None

    def _private(self, line: int, what: str) -> None:
        self.violations.append(Violation("private", self.rel, line, self.module or "", what))

    def _edge(self, target: str, line: int) -> None:
        if target == self.module:
            return
        self.edges.append((target, line))
        # a private module P._m (or below it) is P's own: reachable only from inside P
        parts = target.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])
            if is_private(part) and not (self.module or "").startswith(owner + "."):
                self._private(line, f"imports private module {target}")
                break

    # -- import statements
    def _import(self, node: ast.Import) -> None:
        for alias in node.names:
            if not self._ours(alias.name):
                continue
            target = self._known(alias.name)
            if target is not None:
                self._edge(target, node.lineno)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:
                self.aliases[alias.name.split(".")[0]] = alias.name.split(".")[0]

    def _import_from(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            if self.module is None:
                return
            here = self.module.split(".") if self.is_pkg else self.module.split(".")[:-1]
            here = here[: len(here) - (node.level - 1)]
            base = ".".join(here + ([base] if base else []))
        if not self._ours(base):
            return
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in self.modules:                     # a submodule
                self._edge(sub, node.lineno)
                self.aliases[alias.asname or alias.name] = sub
                continue
            target = self._known(base)
            if target is not None:
                self._edge(target, node.lineno)
            if alias.name != "*" and is_private(alias.name):
                self._private(node.lineno, f"imports private name {alias.name} from {base}")


def scan_package(root: Path, package: str = PACKAGE) -> tuple[Graph, list[Violation]]:
    """The import graph of ``root/package`` and its private-name violations."""
    graph = Graph(root, find_modules(root, package))
    violations: list[Violation] = []
    for module, path in graph.modules.items():
        scan = _FileScan(path, graph.rel(module), module, path.name == "__init__.py", package,
                         graph.modules).run()
        violations += scan.violations
        out = graph.edges.setdefault(module, {})
        for target, line in scan.edges:
            out.setdefault(target, line)
    return graph, violations


def scan_scripts(paths: list[Path], root: Path, package: str = PACKAGE) -> list[Violation]:
    """Private-name violations of files outside the package (benchmarks)."""
    modules = find_modules(root, package)
    out: list[Violation] = []
    for p in paths:
        out += _FileScan(p, p.relative_to(root).as_posix(), None, False, package, modules).run(
        ).violations
    return out


def strongly_connected(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """Tarjan's strongly connected components (iterative), each sorted; all sizes."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    comps: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges.get(start, {}))))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            v, it = work[-1]
            w = next(it, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, {})))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                comps.append(sorted(comp))
    return comps


def _path_within(edges: dict[str, dict[str, int]], comp: set[str], src: str,
                 dst: str) -> list[str]:
    """A shortest import path src → … → dst inside one component (breadth first)."""
    prev: dict[str, str] = {src: src}
    queue = deque([src])
    while queue:
        v = queue.popleft()
        if v == dst:
            break
        for w in sorted(edges.get(v, {})):
            if w in comp and w not in prev:
                prev[w] = v
                queue.append(w)
    path = [dst]
    while path[-1] != src:
        path.append(prev[path[-1]])
    return path[::-1]


def cycle_violations(graph: Graph) -> list[Violation]:
    """Every import edge that lies on a cycle, with the way back to its importer."""
    out = []
    for comp in strongly_connected(graph.edges):
        if len(comp) < 2:
            continue
        members = set(comp)
        for src in comp:
            for dst, line in sorted(graph.edges[src].items()):
                if dst in members:
                    back = " → ".join(_path_within(graph.edges, members, dst, src))
                    out.append(Violation("cycle", graph.rel(src), line, src,
                                         f"import cycle: imports {dst}, and {back}"))
    return out


def layer_of(module: str, layers: tuple[str, ...], exempt: tuple[str, ...]) -> str | None:
    """The module's layer (``pkg.<layer>...``); None for an exempt module or one in no layer."""
    if module in exempt:
        return None
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in layers else None


def layer_violations(graph: Graph, layers: tuple[str, ...] = LAYERS,
                     exempt: tuple[str, ...] = EXEMPT) -> list[Violation]:
    out = []
    rank = {name: i for i, name in enumerate(layers)}
    for src in sorted(graph.modules):
        here = layer_of(src, layers, exempt)
        if here is None:
            if src not in exempt:
                out.append(Violation("layer", graph.rel(src), 1, src, f"{src} is in no layer "
                                     f"(layers: {', '.join(layers)})"))
            continue
        for dst, line in sorted(graph.edges.get(src, {}).items()):
            there = layer_of(dst, layers, exempt)
            if there is not None and rank[there] > rank[here]:
                out.append(Violation("layer", graph.rel(src), line, src,
                                     f"{src} ({here}) imports {dst} ({there}), a higher layer"))
    return out


def check_package(root: Path, package: str = PACKAGE, layers: tuple[str, ...] = LAYERS,
                  exempt: tuple[str, ...] = EXEMPT) -> tuple[Graph, list[Violation]]:
    """All violations of rules (a), (b) and (c) in ``root/package``."""
    graph, private = scan_package(root, package)
    return graph, private + cycle_violations(graph) + layer_violations(graph, layers, exempt)


# ---------------------------------------------------------------------------- the package

@pytest.fixture(scope="module")
def checked() -> tuple[Graph, list[Violation]]:
    return check_package(ROOT)


def test_the_checker_sees_the_package(checked) -> None:
    """Guards against a vacuous pass: the graph holds the modules and the edges we know of."""
    graph, _ = checked
    assert len(graph.modules) > 30
    assert "gradproj.gradients.counter_hash" in graph.edges["gradproj.gradients.projection"]
    assert "gradproj.gradients.trak" in graph.edges["gradproj.gradients.projectors"]
    # a function-level import is an edge too
    assert "gradproj.gradients.kernels" in graph.edges["gradproj.gradients.projection"]


@pytest.mark.parametrize("layer", LAYERS + (TOP,))
def test_layer_imports_one_way_and_no_private_names(checked, layer) -> None:
    _, violations = checked
    mine = [v for v in violations
            if (layer_of(v.module, LAYERS, EXEMPT) or TOP) == layer]
    assert not mine, f"{len(mine)} layering violation(s) in {layer}:\n" + "\n".join(
        sorted({str(v) for v in mine}))


def test_benchmarks_use_no_private_gradproj_names() -> None:
    violations = scan_scripts(sorted((ROOT / "benchmarks").glob("*.py")), ROOT)
    assert not violations, "\n".join(str(v) for v in violations)


# ---------------------------------------------------------------------------- the checker

def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


SYNTHETIC = {
    "pkg/__init__.py": "__version__ = '0'\n",
    "pkg/__main__.py": "from .high.h import H\n",                    # exempt: fine
    "pkg/low/__init__.py": "",
    "pkg/low/a.py": "from pkg.low.b import g\n_secret = 1\n",
    "pkg/low/b.py": "from pkg import __version__\n\n\ndef g():\n"
                    "    from pkg.low import a\n    return a\n",    # lazy: closes a ↔ b
    "pkg/low/c.py": "from pkg.low.a import _secret\n",              # (a) private import
    "pkg/low/d.py": "import pkg.low.a as A\n\nx = A._secret\n"      # (a) private attribute
                    "y = getattr(A, '_secret')\n",                  # (a) via getattr
    "pkg/low/e.py": "from ..high import h\n",                       # (c) upward, relative
    "pkg/low/_impl.py": "",
    "pkg/high/__init__.py": "",
    "pkg/high/h.py": "from pkg.low import c\nfrom pkg.low._impl import *\nH = 1\n",
    "pkg/misc.py": "",                                              # in no layer
}


def test_checker_reports_each_kind_of_violation(tmp_path) -> None:
    _write(tmp_path, SYNTHETIC)
    graph, violations = check_package(tmp_path, "pkg", ("low", "high"), ("pkg", "pkg.__main__"))
    got = {(v.rule, v.path, v.line) for v in violations}
    assert got == {
        ("cycle", "pkg/low/a.py", 1), ("cycle", "pkg/low/b.py", 5),
        ("private", "pkg/low/c.py", 1),
        ("private", "pkg/low/d.py", 3), ("private", "pkg/low/d.py", 4),
        ("private", "pkg/high/h.py", 2),
        ("layer", "pkg/low/e.py", 1),
        ("layer", "pkg/misc.py", 1),
    }, "\n".join(map(str, violations))
    by_place = {(v.path, v.line): v.message for v in violations}
    assert by_place[("pkg/low/a.py", 1)] == ("import cycle: imports pkg.low.b, and "
                                             "pkg.low.b → pkg.low.a")
    assert by_place[("pkg/low/c.py", 1)] == "imports private name _secret from pkg.low.a"
    assert by_place[("pkg/low/d.py", 3)] == "uses private name pkg.low.a._secret"
    assert by_place[("pkg/high/h.py", 2)] == "imports private module pkg.low._impl"
    assert by_place[("pkg/low/e.py", 1)] == ("pkg.low.e (low) imports pkg.high.h (high), "
                                             "a higher layer")
    assert graph.edges["pkg.__main__"] == {"pkg.high.h": 1}
    assert str(violations[0]).startswith(f"{violations[0].path}:{violations[0].line}: ")


def test_checker_passes_a_clean_package_and_catches_a_longer_cycle(tmp_path) -> None:
    files = {"pkg/__init__.py": "", "pkg/low/__init__.py": "",
             "pkg/low/x.py": "import pkg.low.y\n", "pkg/low/y.py": "from pkg.low import z\n",
             "pkg/low/z.py": "", "pkg/high/__init__.py": "",
             "pkg/high/h.py": "from pkg.low.x import *\nfrom pkg.low import _private_ok\n"}
    _write(tmp_path, files)
    _, violations = check_package(tmp_path, "pkg", ("low", "high"), ("pkg",))
    assert [(v.rule, v.path) for v in violations] == [("private", "pkg/high/h.py")]

    (tmp_path / "pkg/high/h.py").write_text("from pkg.low.x import *\n")
    (tmp_path / "pkg/low/z.py").write_text("def f():\n    import pkg.low.x\n")
    _, violations = check_package(tmp_path, "pkg", ("low", "high"), ("pkg",))
    assert sorted((v.path, v.line) for v in violations) == [
        ("pkg/low/x.py", 1), ("pkg/low/y.py", 1), ("pkg/low/z.py", 2)]
    assert {v.rule for v in violations} == {"cycle"}
    assert "pkg.low.y → pkg.low.z → pkg.low.x" in violations[0].message


def test_benchmark_checker_reports_private_uses(tmp_path) -> None:
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/low/__init__.py": "", "pkg/low/a.py": "",
                      "bench/run.py": "import pkg.low.a\nfrom pkg.low.a import ok, _bad\n"
                                      "x = pkg.low.a._worse\nimport _common\n_common._fine\n"})
    violations = scan_scripts([tmp_path / "bench/run.py"], tmp_path, "pkg")
    assert [(v.line, v.message) for v in violations] == [
        (2, "imports private name _bad from pkg.low.a"),
        (3, "uses private name pkg.low.a._worse")]
