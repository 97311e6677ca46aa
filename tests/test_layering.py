"""The package layering holds, read from the source with `ast` (docs/architecture.md).

Layers, bottom-up: scaling -> sweeps -> analysis -> study. A package imports only
packages below it (and itself); `scaling.errors` is the floor every package uses.
Checked on every module of the four packages, counting imports at any depth: module
level, inside functions and classes, `__import__("x")` and `importlib.import_module("x")`
(also with a variable bound to string literals, e.g. `for name in ("a.b", "c.d"):`).

1. no upward import;
2. `analysis` never reaches jax/flax/optax/orbax: not itself, and not through any
   project module it imports (at any depth, including the packages an import runs);
3. no import cycle between modules: the strongly connected components of the module
   graph (function-local imports included) are single modules. An import of `a.b.c`
   also runs `a/__init__` and `a/b/__init__`; those implied edges are left out of the
   cycle check (a package re-exporting its modules would otherwise always be a cycle).
   The body of `if __name__ == "__main__":` runs as the module `__main__`, a different
   module (`python -m pkg.mod` loads pkg.mod as `__main__`), so it counts as its own
   node `<module>.__main__` there.

The checker is also run on a small synthetic tree with one violation of each kind, so
this test is known to be able to fail.
"""
from __future__ import annotations

import ast
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("scaling", "sweeps", "analysis", "study")  # bottom-up
NO_JAX = {"analysis": ("jax", "jaxlib", "flax", "optax", "orbax")}


# ---- reading the imports ------------------------------------------------------------
def module_files(root: Path, packages=LAYERS) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the packages under root."""
    out = {}
    for pkg in packages:
        for path in sorted((root / pkg).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_main_guard(node: ast.AST) -> bool:
    t = node.test if isinstance(node, ast.If) else None
    return (isinstance(t, ast.Compare) and isinstance(t.left, ast.Name) and t.left.id == "__name__"
            and len(t.comparators) == 1 and isinstance(t.comparators[0], ast.Constant)
            and t.comparators[0].value == "__main__")


def _string_bindings(tree: ast.AST) -> dict[str, set[str]]:
    """Names bound to string literals anywhere in the module: `x = "a"`, `for x in ("a", "b")`."""
    out: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for t in node.targets:
                if isinstance(t, ast.Name):
                    out.setdefault(t.id, set()).add(node.value.value)
        elif isinstance(node, (ast.For, ast.comprehension)) and isinstance(node.target, ast.Name) \
                and isinstance(node.iter, (ast.Tuple, ast.List, ast.Set)):
            strs = {e.value for e in node.iter.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
            out.setdefault(node.target.id, set()).update(strs)
    return out


def _dynamic_names(call: ast.Call, bindings: dict[str, set[str]]) -> set[str]:
    """Module names of `__import__(...)` / `importlib.import_module(...)` / `import_module(...)`."""
    f = call.func
    name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    if name not in ("__import__", "import_module") or not call.args:
        return set()
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return {arg.value}
    if isinstance(arg, ast.Name):
        return set(bindings.get(arg.id, ()))
    return set()


def raw_imports(module: str, path: Path, is_package: bool) -> list[tuple[str, str, int]]:
    """(importing node, imported dotted name, line) for every import in the file. The
    importing node is `module`, or `module.__main__` inside an `if __name__ == "__main__":`."""
    tree = ast.parse(path.read_text(), filename=str(path))
    bindings = _string_bindings(tree)
    base = module.split(".") if is_package else module.split(".")[:-1]
    found: list[tuple[str, str, int]] = []

    def visit(node: ast.AST, owner: str) -> None:
        if isinstance(node, ast.Import):
            found.extend((owner, a.name, node.lineno) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = ".".join(base[:len(base) - node.level + 1])
                src = f"{pkg}.{node.module}" if node.module else pkg
            else:
                src = node.module or ""
            # `from a import b`: module a.b if there is one, else (a name defined in a) a
            found.extend((owner, f"{src}.{a.name}" if a.name != "*" else src, node.lineno) for a in node.names)
        elif isinstance(node, ast.Call):
            found.extend((owner, n, node.lineno) for n in _dynamic_names(node, bindings))
        for child in ast.iter_child_nodes(node):
            visit(child, f"{module}.__main__" if _is_main_guard(child) else owner)

    visit(tree, module)
    return found


class Graph:
    """The import graph of the project's modules, with each module's external imports."""

    def __init__(self, root: Path, packages=LAYERS):
        self.root = root
        self.files = module_files(root, packages)
        self.edges: dict[str, dict[str, int]] = {}  # node -> {imported project module: line}
        self.external: dict[str, dict[str, int]] = {}  # node -> {top-level external name: line}
        for module, path in self.files.items():
            self.edges.setdefault(module, {})
            self.external.setdefault(module, {})
            for owner, name, line in raw_imports(module, path, path.name == "__init__.py"):
                self.edges.setdefault(owner, {})
                self.external.setdefault(owner, {})
                target = self.resolve(name)
                if target is not None:
                    self.edges[owner].setdefault(target, line)
                elif name.split(".")[0] not in LAYERS:
                    self.external[owner].setdefault(name.split(".")[0], line)

    def resolve(self, name: str) -> str | None:
        """The most specific project module a dotted name refers to (None: not ours)."""
        parts = name.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.files:
                return ".".join(parts[:n])
        return None

    @staticmethod
    def package(node: str) -> str:
        return node.split(".")[0]

    def parents(self, module: str) -> list[str]:
        """The packages an import of `module` runs first (a/__init__, a/b/__init__)."""
        parts = module.split(".")
        return [p for p in (".".join(parts[:n]) for n in range(1, len(parts))) if p in self.files]

    def where(self, node: str) -> str:
        """The file of a node, relative to the root."""
        return str(self.files[node.removesuffix(".__main__")].relative_to(self.root))


def upward_imports(g: Graph) -> list[str]:
    out = []
    for src, targets in sorted(g.edges.items()):
        for dst, line in sorted(targets.items()):
            if LAYERS.index(g.package(dst)) > LAYERS.index(g.package(src)):
                out.append(f"{g.where(src)}:{line}: {src} imports {dst} ({g.package(src)} is below "
                           f"{g.package(dst)}: layers bottom-up are {' -> '.join(LAYERS)})")
    return out


def forbidden_reach(g: Graph) -> list[str]:
    """Modules of a NO_JAX package that reach a forbidden library, with the chain."""
    out = []
    for src in sorted(g.edges):
        banned = NO_JAX.get(g.package(src))
        if not banned:
            continue
        seen, stack = {src: [src]}, [src]
        while stack:
            node = stack.pop()
            hits = [m for m in g.external.get(node, {}) if m in banned]
            if hits:
                chain = " -> ".join(seen[node])
                out.append(f"{g.where(src)}: {src} reaches {hits[0]} via {chain} "
                           f"({g.where(node)}:{g.external[node][hits[0]]})")
                break
            for nxt in list(g.edges.get(node, {})) + g.parents(node):
                if nxt not in seen:
                    seen[nxt] = seen[node] + [nxt]
                    stack.append(nxt)
    return out


def cycles(g: Graph) -> list[str]:
    """Strongly connected components with more than one module (Tarjan), or self-imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in g.edges.get(v, {}):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in g.edges.get(v, {}):
                found.append(sorted(comp))

    for v in sorted(g.edges):
        if v not in index:
            strongconnect(v)
    out = []
    for comp in sorted(found):
        links = [f"{a} -> {b} ({g.where(a)}:{line})" for a in comp for b, line in sorted(g.edges[a].items())
                 if b in comp]
        out.append(f"import cycle between {', '.join(comp)}: " + "; ".join(links))
    return out


def violations(root: Path, packages=LAYERS) -> list[str]:
    g = Graph(root, packages)
    return upward_imports(g) + forbidden_reach(g) + cycles(g)


# ---- the project ----------------------------------------------------------------
def test_every_package_exists():
    for pkg in LAYERS:
        assert (ROOT / pkg / "__init__.py").exists(), pkg


def test_no_upward_imports():
    bad = upward_imports(Graph(ROOT))
    assert not bad, "\n".join(bad)


def test_analysis_never_reaches_jax_flax_optax_orbax():
    bad = forbidden_reach(Graph(ROOT))
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    bad = cycles(Graph(ROOT))
    assert not bad, "\n".join(bad)


def test_the_graph_sees_function_local_imports():
    """Sanity: known function-local edges of the project are in the graph."""
    g = Graph(ROOT)
    assert "scaling.train.loop" in g.edges["scaling.train"]  # lazy, in __getattr__
    assert "sweeps.store" in g.edges["sweeps.cli"]
    assert "jax" in g.external["scaling.train.loop"]
    assert g.where("scaling.data") == "scaling/data/__init__.py"


# ---- the checker can fail --------------------------------------------------------
def _tree(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, src in files.items():
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(src))
    for pkg in LAYERS:
        (tmp_path / pkg).mkdir(exist_ok=True)
        (tmp_path / pkg / "__init__.py").touch()
    return tmp_path


def test_checker_flags_each_kind_of_violation(tmp_path):
    root = _tree(tmp_path, {
        # 1. upward, function-local, and through __import__ of a loop variable (the old scaling/cli.py)
        "scaling/cli.py": """
            def mount():
                from analysis import report
                for name in ("sweeps.cli",):
                    __import__(name, fromlist=["register"])
            """,
        "sweeps/cli.py": "import importlib\nimportlib.import_module('study.cli')\n",
        "analysis/report.py": "",
        "study/cli.py": "from sweeps import runner\n",  # downward: fine
        # 2. analysis reaching jax: directly inside a function, and through a scaling module
        "analysis/fit.py": "def f():\n    import optax\n",
        "analysis/load.py": "from scaling.models import nfnet\n",
        "scaling/models/__init__.py": "",
        "scaling/models/nfnet.py": "import flax.linen as nn\n",
        # 3. a cycle through a function-local import (the old scaling/data/dataset <-> sources)
        "scaling/data/__init__.py": "from scaling.data.dataset import get_dataset\n",
        "scaling/data/dataset.py": "class Dataset: ...\ndef get_dataset():\n    from scaling.data import sources\n",
        "scaling/data/sources.py": "from scaling.data.dataset import Dataset\n",
        # not a cycle: the __main__ block runs as another module
        "sweeps/worker.py": "def work(): ...\nif __name__ == '__main__':\n    from sweeps import runner\n",
        "sweeps/runner.py": "from sweeps.worker import work\n",
    })
    g = Graph(root)
    up = upward_imports(g)
    assert [u.split(":")[0] for u in up] == ["scaling/cli.py"] * 2 + ["sweeps/cli.py"], up
    assert any("scaling.cli imports analysis.report" in u for u in up)
    assert any("scaling.cli imports sweeps.cli" in u for u in up)
    assert any("sweeps.cli imports study.cli" in u for u in up)
    reach = forbidden_reach(g)
    assert len(reach) == 2, reach
    assert any("analysis.fit reaches optax" in r for r in reach)
    assert any("analysis.load reaches flax via analysis.load -> scaling.models.nfnet" in r for r in reach)
    cyc = cycles(g)
    assert len(cyc) == 1, cyc
    (cyc,) = cyc
    assert cyc.startswith("import cycle between scaling.data.dataset, scaling.data.sources"), cyc
    assert len(violations(root)) == 6
