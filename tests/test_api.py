"""The shape of lsdc's public API: short parameter lists (settings objects instead), no private names across modules."""
import ast, importlib, inspect, pkgutil
from pathlib import Path
import lsdc

MODULES = [m.name for m in pkgutil.iter_modules(lsdc.__path__) if not m.name.startswith('_')]


def _public_callables():
    for name in MODULES:
        mod = importlib.import_module(f'lsdc.{name}')
        for n in getattr(mod, '__all__', []):
            o = getattr(mod, n, None)
            if getattr(o, '__module__', None) != mod.__name__: continue
            if inspect.isfunction(o): yield f'{name}.{n}', o
            elif inspect.isclass(o):
                for k, v in vars(o).items():
                    if inspect.isfunction(v) and not k.startswith('_'): yield f'{name}.{n}.{k}', v


def test_no_public_function_takes_more_than_12_parameters():
    # the command-line entry points (`*_cli`) take one parameter per option, by their nature
    long = {q: len(ps) for q, f in _public_callables() if not q.endswith('_cli')
            for ps in [[p for p in inspect.signature(f).parameters.values() if p.name not in ('self', 'cls')]] if len(ps) > 12}
    assert not long, f"more than 12 parameters (pass a settings object): {long}"


def test_no_module_imports_a_private_name_of_another():
    bad = []
    for name in MODULES:
        tree = ast.parse((Path(lsdc.__file__).parent/f'{name}.py').read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or '').lstrip('.').split('.')[-1] in MODULES + ['lsdc']:
                bad += [f"{name} imports {a.name} from {node.module}" for a in node.names if a.name.startswith('_') and a.name != '__version__']
    assert not bad, bad


def test_the_checks_can_fail():
    def f(a, b, c, d, e, f, g, h, i, j, k, l, m): pass
    assert len(inspect.signature(f).parameters) == 13   # what the first test would report
    tree = ast.parse('from .dicom import _private')
    assert [a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names] == ['_private']


def _records():
    "{name: number of fields} of lsdc's records (NamedTuples and dataclasses)"
    recs = {}
    for name in MODULES:
        for n in ast.walk(ast.parse((Path(lsdc.__file__).parent/f'{name}.py').read_text())):
            if isinstance(n, ast.ClassDef) and (any(isinstance(b, ast.Name) and b.id == 'NamedTuple' for b in n.bases)
                                                or any('dataclass' in ast.unparse(d) for d in n.decorator_list)):
                recs[n.name] = sum(isinstance(s, ast.AnnAssign) for s in n.body)
    return recs


def positional_records(tree, recs:dict) -> list:
    "Calls that build a record of more than three fields from positions (or a starred sequence), `cls(...)` inside one included"
    out = []
    for cls in [None, *(n for n in ast.walk(tree) if isinstance(n, ast.ClassDef) and recs.get(n.name, 0) > 3)]:
        for n in ast.walk(cls or tree):
            if not isinstance(n, ast.Call): continue
            f = n.func.id if isinstance(n.func, ast.Name) else n.func.attr if isinstance(n.func, ast.Attribute) else None
            if f == 'cls' and cls is not None: f = cls.name
            elif cls is not None: continue
            if recs.get(f, 0) > 3 and (len(n.args) > 3 or any(isinstance(a, ast.Starred) for a in n.args)): out.append(ast.unparse(n)[:80])
    return out


def test_no_record_of_more_than_three_fields_is_built_by_position():
    recs = _records()
    assert recs.get('LearnerSettings', 0) > 3 and recs.get('CropOptions', 0) > 3   # the records are found
    bad = {name: p for name in MODULES if (p := positional_records(ast.parse((Path(lsdc.__file__).parent/f'{name}.py').read_text()), recs))}
    assert not bad, bad
    assert positional_records(ast.parse('CropOptions(1, 2, 3, 4)\nSchedule(*s)'), recs) == ['CropOptions(1, 2, 3, 4)', 'Schedule(*s)']
