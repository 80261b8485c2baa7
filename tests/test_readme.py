"""The README's commands and code, as a new user would run them: every `lsdc` command line parses with the options it
shows, and every Python block runs (on a small synthetic stand-in for the folder it reads)."""
import importlib, re, shlex
from pathlib import Path
import pytest
from fastcore.script import anno_parser
from lsdc.cli import COMMANDS

README = (Path(__file__).parents[1]/'README.md').read_text()
BLOCKS = re.findall(r'```(\w*)\n(.*?)```', README, re.S)


def lsdc_lines(blocks=BLOCKS) -> list[str]:
    "Every `lsdc ...` command of the README's shell blocks, its comment and shell variables resolved"
    env, out = {}, []
    for lang, text in blocks:
        if lang != 'sh': continue
        for line in text.splitlines():
            line = line.split(' #')[0].strip()
            if m := re.fullmatch(r'(\w+)=(\S+)', line): env[m.group(1)] = m.group(2); continue
            for part in line.split('&&'):
                part = re.sub(r'\$(\w+)', lambda m: env.get(m.group(1), m.group(0)), part.strip())
                if part.startswith('lsdc '): out.append(part)
    return out


def parse(line:str):
    "The options namespace of one `lsdc` command line, as `lsdc.cli.main` would parse it (SystemExit on a bad option)"
    cmd, *rest = shlex.split(line)[1:]
    mod, fn, _ = COMMANDS[cmd]
    f = getattr(importlib.import_module(mod), fn)
    return anno_parser(getattr(f, '__wrapped__', f), prog=f'lsdc {cmd}').parse_args(rest)


def test_the_readme_shows_commands_and_code():
    assert len(lsdc_lines()) >= 8 and any(lang == 'python' for lang, _ in BLOCKS)


@pytest.mark.parametrize('line', lsdc_lines())
def test_every_lsdc_command_of_the_readme_parses(line):
    assert line.split()[1] in COMMANDS, line
    parse(line)


def test_a_bad_option_fails_to_parse():
    with pytest.raises(SystemExit): parse('lsdc train png/train models --no-such-option 1')
    assert lsdc_lines([('sh', 'D=/x\nlsdc check $D  # a comment\npip install a && lsdc demo --out d')]) == ['lsdc check /x', 'lsdc demo --out d']


def test_every_python_block_of_the_readme_runs(tmp_path, monkeypatch):
    from lsdc.synth import make_synthetic
    make_synthetic(tmp_path/'lsdc-demo'/'data', n_train=3, n_test=1, image_size=64, seed=0, n_workers=1)   # what `lsdc demo` makes
    monkeypatch.chdir(tmp_path)
    for lang, code in BLOCKS:
        if lang == 'python': exec(compile(code, 'README.md', 'exec'), {})
