"""The package's import graph: every module imports only modules below it (no circle), and none imports another lsdc
module inside a function (the way a circle is usually dodged)."""
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
