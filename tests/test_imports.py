"""The package's imports: every module imports only modules below it (no circle), none imports another lsdc
module inside a function (the way a circle is usually dodged), and every package it imports is declared."""
import ast
from pathlib import Path
import lsdc

PKG = Path(lsdc.__file__).parent


def _imports(fn: Path) -> tuple[set, list]:
    "The lsdc modules `fn` imports at its top level, and the lsdc imports it makes inside functions (line numbers)"
    tree = ast.parse(fn.read_text())
    def target(node):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1: return [node.module or n.name for n in node.names] if node.module is None else [node.module]
            if (node.module or '').startswith('lsdc.'): return [node.module.split('.')[1]]
        if isinstance(node, ast.Import): return [a.name.split('.')[1] for a in node.names if a.name.startswith('lsdc.')]
        return []
    top = {m for node in tree.body for m in target(node)}
    inner = [(node.lineno, m) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(f) for m in target(node)]
    return top, inner


def test_no_import_circle_and_no_import_inside_a_function():
    mods = {fn.stem: fn for fn in PKG.glob('*.py') if not fn.stem.startswith('_')}
    graph, inner = {}, {}
    for m, fn in mods.items(): graph[m], inner[m] = _imports(fn)
    assert {m: i for m, i in inner.items() if i} == {}
    # a depth-first search for a cycle; the cli loads sub-command modules by name, which is not an import
    state = {}
    def visit(m, path):
        if state.get(m) == 1: raise AssertionError(f"import circle: {' -> '.join(path + [m])}")
        if state.get(m) == 2: return
        state[m] = 1
        for n in sorted(graph.get(m, ())):
            if n in mods and n != '__init__': visit(n, path + [m])
        state[m] = 2
    for m in sorted(mods): visit(m, [])
    assert 'pipeline' in graph['demo'] and 'inference' in graph['pipeline'] and 'pipeline' not in graph['inference']


def _third_party(fn: Path) -> set:
    "Top-level names of the modules `fn` imports that are neither the standard library nor lsdc (optional ones inside `try` left out)"
    import sys
    tree = ast.parse(fn.read_text())
    guarded = {id(n) for t in ast.walk(tree) if isinstance(t, ast.Try) for b in t.body for n in ast.walk(b)}
    names = set()
    for node in ast.walk(tree):
        if id(node) in guarded: continue
        if isinstance(node, ast.Import): names |= {a.name.split('.')[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module: names.add(node.module.split('.')[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in ('lsdc', '__future__')}


def test_every_imported_package_is_declared():
    import tomllib
    from importlib.metadata import packages_distributions
    from packaging.requirements import Requirement
    proj = tomllib.loads((PKG.parent/'pyproject.toml').read_text())['project']
    declared = {Requirement(r).name.lower().replace('_', '-') for r in proj['dependencies']}
    dists = packages_distributions()
    missing = {}
    for fn in PKG.glob('*.py'):
        for mod in _third_party(fn):
            names = {d.lower().replace('_', '-') for d in dists.get(mod, [mod])}
            if not names & declared: missing.setdefault(mod, []).append(fn.name)
    assert missing == {}, f"imported but not declared in pyproject.toml's dependencies: {missing}"
