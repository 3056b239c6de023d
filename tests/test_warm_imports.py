"""pages/warm: every entry path imports it first, and with it threads that start on different pages at
once never see a half-initialised torch (the cold-server race; tests/e2e/test_cold_server.py is the
same check against a real server)."""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap

import pytest

from conftest import ROOT

ENTRY_FILES = [ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]


def test_app_and_every_page_import_warm_before_anything_else():
    for path in ENTRY_FILES:
        imports = [node for node in ast.parse(path.read_text()).body if isinstance(node, (ast.Import, ast.ImportFrom))
                   and getattr(node, "module", None) != "__future__"]
        first = imports[0]
        assert isinstance(first, ast.Import) and first.names[0].name == "pages.warm", \
            f"{path.name}: its first import must be `import pages.warm` (see pages/warm/__init__.py)"


# Threads that each enter torch by another door, as the pages do (torch.nn first, torchvision, captum,
# torch.distributed through captum): without the warm import first, 5 runs of 5 on this machine ended
# with "partially initialized module 'torch.nn.parameter'" or "cannot initialize type RpcBackendOptions".
RACE = textwrap.dedent("""
    import importlib, sys, threading
    sys.path.insert(0, sys.argv[1])
    doors = ["torch.nn", "torchvision", "captum.attr", "cbd_core.analysis.attributions", "cbd_core.runs",
             "pages.common", "cbd_core.report", "torch.distributed"]
    errors, start = [], threading.Barrier(len(doors))
    def session(door):
        start.wait()
        try:
            import pages.warm
            importlib.import_module(door)
        except Exception as err:
            errors.append(f"{door}: {type(err).__name__}: {err}")
    threads = [threading.Thread(target=session, args=(door,)) for door in doors]
    [t.start() for t in threads]
    [t.join() for t in threads]
    print(errors)
    sys.exit(1 if errors else 0)
""")


@pytest.mark.slow
def test_threads_opening_pages_at_once_get_whole_modules():
    done = subprocess.run([sys.executable, "-c", RACE, str(ROOT)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def test_warm_covers_the_heavy_imports_and_leaves_the_workers_own():
    from pages.warm import app_imports

    names = set(app_imports())
    assert {"torch", "torchvision", "captum.attr", "matplotlib", "plotly.graph_objects", "pandas"} <= names
    assert not {name for name in names if name.split(".")[0] in {"umap", "numba", "ray"}}
