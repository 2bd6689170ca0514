"""The package's shape, read from its source with `ast`: every import points down the layers,
no module imports itself back through others, and no module or function is long.

The layers are the picture in the docstring of deqdist/__init__.py; LAYERS below is the same
picture as data. A room is a sub-package (`train/`) or a top-level module (`deq.py`).
"""
from __future__ import annotations

import ast
from pathlib import Path

import deqdist

PACKAGE = Path(deqdist.__file__).resolve().parent

# Top to bottom. A room may import the rooms in the rows below its own: none above, none beside.
LAYERS = [
    ["cli"],
    ["main"],
    ["bench"],
    ["train"],
    ["config", "runtime"],
    ["data", "presets"],
    ["prepare", "parallel"],
    ["model", "store"],
    ["deq", "regularize"],
    ["reversible"],
    ["solvers"],
    ["typed_config", "report"],
    ["errors"],
]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
# Modules or functions allowed over the limits, each with the reason (none today). A stale entry
# fails the size test.
EXEMPT: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imported(name: str, path: Path) -> set[str]:
    """The package's modules that module `name` imports, anywhere in its file (also inside functions).

    `from a import b` names the module a.b when there is one, else a itself; the implicit import of
    a parent package's __init__ is not counted (every submodule import would be a cycle otherwise).
    """
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for a in node.names:
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imported(name, path) for name, path in MODULES.items()}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None  # None: the package root (its docstring only)


def _row(room: str) -> int:
    return next(i for i, row in enumerate(LAYERS) if room in row)


def test_every_room_has_a_place_in_the_layers_and_the_picture():
    rooms = {_room(m) for m in MODULES} - {None}
    placed = {r for row in LAYERS for r in row}
    assert rooms <= placed, f"rooms missing from LAYERS (and the picture in deqdist/__init__.py): {rooms - placed}"
    assert placed <= rooms, f"LAYERS names rooms that do not exist: {placed - rooms}"
    picture = deqdist.__doc__ or ""
    missing = sorted(r for r in rooms if r not in picture)
    assert not missing, f"not in the picture in deqdist/__init__.py's docstring: {missing}"


def test_imports_point_down_the_layers():
    wrong = sorted(f"{a} -> {b}" for a, bs in GRAPH.items() for b in bs
                   if None not in (_room(a), _room(b)) and _room(a) != _room(b) and _row(_room(a)) >= _row(_room(b)))
    assert not wrong, "imports that point up or sideways:\n" + "\n".join(wrong)


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            w = next(children, None)
            if w is not None:
                if w not in index:
                    index[w] = low[w] = len(index)
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.append(w)
                    if w == v:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_no_import_cycles_not_even_inside_a_room():
    assert _cycles(GRAPH) == []


def test_the_cycle_finder_finds_cycles():
    # The test above passes on an empty answer; this one keeps the finder honest.
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _sizes() -> dict[str, int]:
    """'file' -> lines and 'file:function' -> lines (methods as Class.method) over the limits."""
    over = {}
    for path in MODULES.values():
        rel = path.relative_to(PACKAGE).as_posix()
        tree = ast.parse(path.read_text(encoding="utf-8"))
        lines = len(path.read_text(encoding="utf-8").splitlines())
        if lines > MAX_MODULE_LINES:
            over[rel] = lines
        scopes = [(tree, "")]
        while scopes:
            scope, prefix = scopes.pop()
            for node in ast.iter_child_nodes(scope):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    n = node.end_lineno - node.lineno + 1
                    if n > MAX_FUNCTION_LINES:
                        over[f"{rel}:{prefix}{node.name}"] = n
                    scopes.append((node, f"{prefix}{node.name}."))
                elif isinstance(node, ast.ClassDef):
                    scopes.append((node, f"{prefix}{node.name}."))
    return over


def test_modules_and_functions_are_short():
    over = _sizes()
    too_long = {k: n for k, n in over.items() if k not in EXEMPT}
    assert not too_long, (f"over {MAX_MODULE_LINES} lines per module or {MAX_FUNCTION_LINES} per function: "
                          f"{too_long}")
    stale = sorted(set(EXEMPT) - set(over))
    assert not stale, f"no longer too long, delete from EXEMPT in tests/test_layers.py: {stale}"
