"""The code's measures, from the source alone (ast and the import graph; nothing is imported).

    python benchmarks/code_measures.py [--root actstore] [--json]

Prints one table:

* import circles: strongly connected components (more than one module) of the graph of
  ``actstore`` imports, function-local imports included (a circle held together by a
  local import is still a circle);
* arrows up: imports from a module to one of a later stage of the flow (:data:`STAGES`, after
  STYLE.md: inputs and models -> stores -> capture -> stats -> vectors -> steering -> evaluation
  -> serve, with the foundations first and the CLI last);
* the layout: top-level modules (``.py`` files directly in ``actstore/``), alias modules (a
  module that only puts another in ``sys.modules`` or only re-exports), file names that occur
  twice;
* the longest function and the widest signature, in the whole house and on the capture path
  (:data:`CAPTURE_PATH`): lines from ``def`` to the last line; parameters counted without
  ``self``/``cls``, ``*args`` and ``**kwargs`` counting one each; and how many functions are
  over 60 lines or 10 parameters;
* the largest module (lines);
* the number of public names (``actstore.__all__`` and ``actstore.stores.__all__``);
* ``"dense"`` string literals in the package (``k`` is ``int | None`` inside; "dense" belongs to
  the file, CSV and CLI edges);
* files touched per kind of change, counted by proxy: the files that would have to change
  for a new capture position (files comparing ``position``/``mode`` to a position literal),
  a new vector method (files comparing ``method`` to a method literal or spelling an old
  method name), a new recorded group property (files reading a capture-spec key straight
  from group attributes), a new store kind (files sniffing ``"://"`` or naming ``memory://``).
  Proxies, not a proof: they count where today's code branches or reads raw, which is where
  such a change lands.
"""

from __future__ import annotations

import argparse
import ast
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Stage of each module (dotted, without "actstore."), by prefix; the longest prefix wins.
# A module may import from its own stage or an earlier one.
STAGES = [
    ("_version", 0), ("errors", 0), ("_files", 0), ("_cache", 0), ("_dask", 0), ("moments", 0),
    ("inputs", 1), ("models", 1),
    ("stores", 2),
    ("capture", 3),
    ("stats", 4),
    ("vectors", 5),
    ("steering", 6),
    ("evaluation", 7),
    ("serve", 8),
    ("cli", 9),
    ("", 9),  # actstore/__init__: the public face, imports anything
]
# The layout of issue 19's time, for measuring an older tree with this script.
OLD_STAGES = [
    ("models", 1), ("datasets", 1), ("sources", 1), ("records", 1), ("fields", 1), ("ab", 1), ("corpus", 1),
    ("demo", 1), ("pipeline", 3), ("ingest", 3), ("covariance", 4), ("directions", 5), ("probe", 5),
    ("vector_info", 5), ("methods", 5), ("controls", 5), ("interop", 5), ("monitor", 6), ("intervals", 6),
    ("evaluate", 7), ("replay", 7), ("protocols", 7), ("ledger", 7), ("sweep", 7), ("report", 7),
]

CAPTURE_PATH = ["capture.py", "pipeline.py", "capture/", "cli/capture.py"]
MAX_FUNCTION_LINES = 60
MAX_PARAMETERS = 10
MAX_MODULE_LINES = 400
MAX_TOP_LEVEL_MODULES = 10

POSITION_LITERALS = {"last", "last-1", "mean", "all", "first"}
METHOD_LITERALS = {"enr", "whitened", "pca", "probe", "lda", "mean-diff", "enr-topk", "whitened-enr-topk",
                   "random", "letter"}
OLD_METHOD_NAMES = ("enr-topk", "mean-diff", "whitened-enr-topk")
SPEC_KEYS = {"site", "position", "model_id", "model_fingerprint", "dtype", "store_dtype", "stats_only",
             "hidden_size", "layers"}


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_graph(root: Path) -> dict[str, set[str]]:
    files = {module_name(p, root): p for p in root.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        tree = ast.parse(path.read_text())
        is_package = path.name == "__init__.py"
        for node in ast.walk(tree):
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = resolve(name, is_package, node)
                targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
            for target in targets:
                # the deepest known module that the target names
                parts = target.split(".")
                while parts and ".".join(parts) not in files:
                    parts.pop()
                found = ".".join(parts)
                if found and found != name and found.startswith(root.name):
                    # "from . import x" inside a package names the package's submodule, not itself
                    graph[name].add(found)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
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

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def stage(module: str) -> int:
    short = module.split(".", 1)[1] if "." in module else ""
    table = dict(OLD_STAGES + STAGES)
    best = max((p for p in table if short == p or short.startswith(p + ".") or p == ""), key=len)
    return table[best]


def arrows_up(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    ups = []
    for source, targets in graph.items():
        for target in targets:
            # a package's __init__ re-exporting its own modules is not an arrow up
            if target.startswith(source + "."):
                continue
            if stage(target) > stage(source):
                ups.append((source, target))
    return sorted(ups)


def functions(path: Path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            names = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]
            names = [n for n in names if n not in ("self", "cls")]
            width = len(names) + (args.vararg is not None) + (args.kwarg is not None)
            yield node.name, node.end_lineno - node.lineno + 1, width


def on_capture_path(rel: str) -> bool:
    return any(rel == p or (p.endswith("/") and rel.startswith(p)) for p in CAPTURE_PATH)


def public_names(init: Path) -> int:
    tree = ast.parse(init.read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets):
            return len(ast.literal_eval(node.value))
    return 0


def _compares_to(tree, names: set[str], literals: set[str]) -> int:
    """How many comparisons of a name in ``names`` to a literal in ``literals``."""
    count = 0
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            sides = [node.left, *node.comparators]
            named = any((isinstance(s, ast.Name) and s.id in names)
                        or (isinstance(s, ast.Attribute) and s.attr in names) for s in sides)
            consts = []
            for s in sides:
                if isinstance(s, ast.Constant) and isinstance(s.value, str):
                    consts.append(s.value)
                elif isinstance(s, (ast.Tuple, ast.Set, ast.List)):
                    consts += [e.value for e in s.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)]
            if named and any(c in literals for c in consts):
                count += 1
    return count


def _reads_spec_raw(tree) -> bool:
    for node in ast.walk(tree):
        # <x>.attrs.get("site", ...) or <x>.attrs["site"]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get":
            owner = node.func.value
            if isinstance(owner, ast.Attribute) and owner.attr == "attrs" and node.args:
                key = node.args[0]
                if isinstance(key, ast.Constant) and key.value in SPEC_KEYS:
                    return True
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "attrs":
            key = node.slice
            if isinstance(key, ast.Constant) and key.value in SPEC_KEYS and isinstance(node.ctx, ast.Load):
                return True
    return False


def is_alias(path: Path) -> bool:
    """A module whose whole job is to be another: it replaces itself in ``sys.modules``, or its
    body is imports (and ``__all__``) only, outside a package's ``__init__``."""
    text = path.read_text()
    if "sys.modules[__name__]" in text:
        return True
    if path.name == "__init__.py":
        return False
    body = [node for node in ast.parse(text).body
            if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    return bool(body) and all(
        isinstance(node, (ast.Import, ast.ImportFrom))
        or (isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in node.targets))
        for node in body)


def dense_literals(root: Path) -> list[str]:
    """Where the string ``"dense"`` is spelled in the package (file, CSV and CLI edges only)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value == "dense":
                found.append(f"{path.relative_to(root)}:{node.lineno}")
    return found


def layout(root: Path) -> dict:
    files = sorted(root.rglob("*.py"))
    names = [p.name for p in files if p.name != "__init__.py"]
    return {
        "top-level modules": sorted(p.name for p in root.glob("*.py")),
        "alias modules": [str(p.relative_to(root)) for p in files if is_alias(p)],
        "names twice": sorted({n for n in names if names.count(n) > 1}),
    }


def oversized(root: Path) -> list[str]:
    """Functions over :data:`MAX_FUNCTION_LINES` lines or :data:`MAX_PARAMETERS` parameters."""
    out = []
    for path in sorted(root.rglob("*.py")):
        for name, length, width in functions(path):
            if length > MAX_FUNCTION_LINES or width > MAX_PARAMETERS:
                out.append(f"{path.relative_to(root)}:{name} ({length} lines, {width} parameters)")
    return out


def change_footprint(root: Path) -> dict[str, list[str]]:
    kinds = {"capture position": [], "vector method": [], "group property": [], "store kind": []}
    sites = {"capture position": 0, "vector method": 0}
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root))
        text = path.read_text()
        tree = ast.parse(text)
        position_sites = _compares_to(tree, {"position", "mode", "positions"}, POSITION_LITERALS)
        method_sites = _compares_to(tree, {"method", "kind"}, METHOD_LITERALS)
        sites["capture position"] += position_sites
        sites["vector method"] += method_sites
        if position_sites:
            kinds["capture position"].append(rel)
        if method_sites or any(
                re.search(rf"[\"']{re.escape(name)}[\"']", text) and "ALIASES" not in text
                for name in OLD_METHOD_NAMES):
            kinds["vector method"].append(rel)
        if _reads_spec_raw(tree):
            kinds["group property"].append(rel)
        if '"://"' in text or "'://'" in text or "memory://" in text:
            kinds["store kind"].append(rel)
    return kinds, sites


def measure(root: Path) -> dict:
    graph = import_graph(root)
    found_circles = circles(graph)
    ups = arrows_up(graph)
    longest = widest = house_longest = house_widest = ("", 0)
    largest = ("", 0)
    for path in sorted(root.rglob("*.py")):
        rel = str(path.relative_to(root))
        lines = len(path.read_text().splitlines())
        if lines > largest[1]:
            largest = (rel, lines)
        for name, length, width in functions(path):
            if length > house_longest[1]:
                house_longest = (f"{rel}:{name}", length)
            if width > house_widest[1]:
                house_widest = (f"{rel}:{name}", width)
            if on_capture_path(rel):
                if length > longest[1]:
                    longest = (f"{rel}:{name}", length)
                if width > widest[1]:
                    widest = (f"{rel}:{name}", width)
    footprint, sites = change_footprint(root)
    return {
        "import circles": len(found_circles),
        "modules in circles": sum(len(c) for c in found_circles),
        "circles": found_circles,
        "arrows up": len(ups),
        "arrows up list": [f"{a} -> {b}" for a, b in ups],
        "layout": layout(root),
        "longest function": house_longest,
        "widest signature": house_widest,
        "oversized functions": oversized(root),
        "dense literals": dense_literals(root),
        "longest capture-path function": longest,
        "widest capture-path signature": widest,
        "largest module": largest,
        "public names (actstore)": public_names(root / "__init__.py"),
        "public names (actstore.stores)": public_names(root / "stores" / "__init__.py"),
        "files touched": {kind: len(files) for kind, files in footprint.items()},
        "files touched lists": footprint,
        "branch sites": sites,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT / "actstore"))
    parser.add_argument("--json", action="store_true", help="print every measure as JSON")
    args = parser.parse_args(argv)
    result = measure(Path(args.root).resolve())
    if args.json:
        print(json.dumps(result, indent=2))
        return
    print(f"import circles           {result['import circles']} ({result['modules in circles']} modules)")
    for circle in result["circles"]:
        print(f"    {' <-> '.join(circle)}")
    print(f"arrows up                {result['arrows up']}")
    for arrow in result["arrows up list"]:
        print(f"    {arrow}")
    shape = result["layout"]
    print(f"top-level modules        {len(shape['top-level modules'])}  {', '.join(shape['top-level modules'])}")
    print(f"alias modules            {len(shape['alias modules'])}  {', '.join(shape['alias modules'])}")
    print(f"file names twice         {len(shape['names twice'])}  {', '.join(shape['names twice'])}")
    name, length = result["longest function"]
    print(f"longest function         {length} lines ({name})")
    name, width = result["widest signature"]
    print(f"widest signature         {width} parameters ({name})")
    print(f"functions over {MAX_FUNCTION_LINES} lines or {MAX_PARAMETERS} parameters: {len(result['oversized functions'])}")
    for line in result["oversized functions"]:
        print(f"    {line}")
    print(f'"dense" literals         {len(result["dense literals"])}')
    name, length = result["longest capture-path function"]
    print(f"longest capture function {length} lines ({name})")
    name, width = result["widest capture-path signature"]
    print(f"widest capture signature {width} parameters ({name})")
    name, lines = result["largest module"]
    print(f"largest module           {lines} lines ({name})")
    print(f"public names             {result['public names (actstore)']} in actstore, "
          f"{result['public names (actstore.stores)']} in actstore.stores")
    for kind, files in result["files touched lists"].items():
        print(f"files touched: {kind:<17} {len(files)}  {', '.join(files)}")
    for kind, count in result["branch sites"].items():
        print(f"if-sites comparing a {kind} to a literal: {count}")


if __name__ == "__main__":
    main()
