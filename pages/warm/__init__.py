"""Import, once per process, every module the app's pages and the library under them import, before any
page's own imports run. app.py and every page import this first (`tests/test_warm_imports.py` checks).

Why: Streamlit runs each session's script in its own thread. On a fresh server a class opening pages
at once imports torch, torchvision, captum... in several threads together, and Python's import locks
do not make a thread importing `torch.nn.x` wait for a `torch` or `torch.nn` that another thread is
still initialising (the parent is already in sys.modules). The two then trip the import deadlock
detector and one gets a half-made module: "partially initialized module 'torch.nn.parameter'" or
"cannot initialize type RpcBackendOptions" on a student's page. Importing torch in app.py does not
help: every session runs app.py in its own thread too, and a deep link runs a page without it.

How: this module's body is the critical section. Python holds one lock per module while it runs a
module's body, and a thread that imports a module another thread is still running waits for it to
finish. So the first session runs the imports below, the others wait at their first line (they hold
no other import lock yet, so nothing can deadlock), and by the time any page's own imports run,
everything they name is already complete in sys.modules. Later sessions find it loaded and pay nothing.

What: every module named by an import statement (top level or inside a function) in app.py, pages/
and cbd_core/, read from the source so a new lazy import is covered without editing a list here,
except the worker's own heavy imports that no page reaches (below).
"""

from __future__ import annotations

import importlib
import re
from pathlib import Path

APP = Path(__file__).resolve().parents[2]

# Imported only by the background worker or a Ray driver, never while a page renders: fitting UMAP
# (umap-learn and numba, the pages read the maps from files), Ray (only with a cluster address), the CLI
# entry point (running it would start the CLI) and the test-only packages.
NOT_ON_A_PAGE = ("umap", "numba", "pynndescent", "ray", "cbd_core.__main__", "pytest")


# Import statements, read as text. Not with `ast.parse`: on Python 3.11 it is not safe beside another
# thread's parse (CPython's AST converter keeps one recursion counter per interpreter; a session compiling
# its page at that moment failed with "SystemError: AST constructor recursion depth mismatch"), and
# Streamlit compiles pages in other sessions' threads while this runs. A line in a docstring that reads
# like an import only adds a name to try.
IMPORT = re.compile(r"^[ \t]*import[ \t]+([\w.]+(?:[ \t]+as[ \t]+\w+)?(?:[ \t]*,[ \t]*[\w.]+(?:[ \t]+as[ \t]+\w+)?)*)",
                    re.MULTILINE)
FROM = re.compile(r"^[ \t]*from[ \t]+(\.*[\w.]*)[ \t]+import[ \t]+(\([^)]*\)|[^\n#]+)", re.MULTILINE)


def imported_names(path: Path, package: str | None) -> set[str]:
    """The absolute names of the modules `path` imports, and for `from x import y` also "x.y" (which is
    a module or not: the caller tries). `package` resolves relative imports."""
    text = path.read_text()
    names = {part.split()[0] for match in IMPORT.finditer(text) for part in match.group(1).split(",")}
    for match in FROM.finditer(text):
        module, imported = match.group(1), match.group(2).strip("() \t")
        level = len(module) - len(module.lstrip("."))
        if level:
            if package is None:
                continue
            base = ".".join(package.split(".")[:len(package.split(".")) - level + 1])
            module = f"{base}.{module[level:]}" if module[level:] else base
        if module == "__future__":
            continue
        names.add(module)
        for part in imported.split(","):
            words = re.sub(r"#.*", "", part).split()
            if words and words[0] != "*":
                names.add(f"{module}.{words[0]}")
    return names


def module_name(path: Path) -> str:
    """`cbd_core/analysis/attributions.py` -> "cbd_core.analysis.attributions"."""
    parts = list(path.relative_to(APP).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def app_imports() -> list[str]:
    """Every module app.py, pages/ and cbd_core/ import, sorted, without NOT_ON_A_PAGE."""
    names: set[str] = set(imported_names(APP / "app.py", None))
    for path in [*sorted((APP / "pages").rglob("*.py")), *sorted((APP / "cbd_core").rglob("*.py"))]:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
        if path.parent == APP / "pages":
            package = None  # page files run as scripts, never as modules of a package
        else:
            names.add(module_name(path))
        names.update(imported_names(path, package))
    names.discard("pages.warm")
    return sorted(name for name in names
                  if not any(name == skip or name.startswith(skip + ".") for skip in NOT_ON_A_PAGE))


def _import_all() -> list[str]:
    missing = []
    for name in app_imports():
        try:
            importlib.import_module(name)
        except ImportError:
            # "x.y" from `from x import y` where y is a function, or an optional package that is not
            # installed (data.py tries two layouts of mlxtend): the page handles that itself.
            missing.append(name)
    return missing


NOT_MODULES = _import_all()
