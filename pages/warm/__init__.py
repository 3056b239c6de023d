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

import ast
import importlib
from pathlib import Path

APP = Path(__file__).resolve().parents[2]

# Imported only by the background worker or a Ray driver, never while a page renders: fitting UMAP
# (umap-learn and numba, the pages read the maps from files), Ray (only with a cluster address), the CLI
# entry point (running it would start the CLI) and the test-only packages.
NOT_ON_A_PAGE = ("umap", "numba", "pynndescent", "ray", "cbd_core.__main__", "pytest")


def imported_names(path: Path, package: str | None) -> set[str]:
    """The absolute names of the modules `path` imports, and for `from x import y` also "x.y" (which is
    a module or not: the caller tries). `package` resolves relative imports."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                if package is None:
                    continue
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1])
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            if module == "__future__":
                continue
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names if alias.name != "*")
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
