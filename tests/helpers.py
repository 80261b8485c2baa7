"""What several test modules share: `lsdc ...` run in the test's own process."""
import contextlib, io, logging, subprocess, warnings


def lsdc_in_process(*args, check:bool=True) -> subprocess.CompletedProcess:
    """`lsdc ARGS` run by `lsdc.cli.main` in this process: its exit code, stdout and stderr, as a child process would give
    them, without the child's 9-10 s of importing torch and fastai. As in a child, the log lines go to its stderr (`lsdc
    train` logs INFO, WARNING with --quiet; the other commands WARNING and above) and so do Python's warnings, under the
    interpreter's default filters, each shown once. What needs a process of its own (a kill, a fresh interpreter, other
    environment variables, the exact bytes of stderr) starts one."""
    from lsdc.cli import main
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    level = logging.INFO if argv[:1] == ['train'] and '--quiet' not in argv else logging.WARNING
    handler = logging.StreamHandler(err)
    handler.setFormatter(logging.Formatter('%(message)s')); handler.setLevel(level)
    root = logging.getLogger(); old = root.level
    root.addHandler(handler); root.setLevel(min(old or level, level))
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), warnings.catch_warnings():
            warnings.resetwarnings(); warnings.simplefilter('default')
            for c in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning): warnings.simplefilter('ignore', c)
            warnings.showwarning = lambda m, c, f, n, file=None, line=None: err.write(warnings.formatwarning(m, c, f, n, line))
            try: code = main(argv)
            except SystemExit as e: code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        root.removeHandler(handler); root.setLevel(old)
    r = subprocess.CompletedProcess(['lsdc', *argv], code, out.getvalue(), err.getvalue())
    if check and code != 0: raise AssertionError(f"lsdc {' '.join(argv)} exited {code}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    return r
