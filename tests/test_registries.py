"""The attack and defense registries carry everything the pages show about them, and the pages never
branch on a registered name: adding an attack or a defense touches its own module and the registry."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cbd_core.attacks import ATTACKS
from cbd_core.defenses import DEFENSES, defense_or_none

PAGES = Path(__file__).resolve().parents[1] / "pages"


@pytest.mark.parametrize("defense", list(DEFENSES.values()), ids=list(DEFENSES))
def test_every_defense_describes_itself(defense):
    declared = {p.name for p in defense.params}
    assert defense.title and defense.description
    assert defense.key_params and set(defense.key_params) <= declared, "the Train form's key settings must exist"
    for model in defense.model_names:
        view = defense.model_view(model)
        assert view.title and view.map_hint and view.attribution_hint


def test_phase_titles_and_suspicion_come_from_the_registry():
    assert DEFENSES["cbd"].phase_title("f_C") == "deconfounded f_C"
    assert DEFENSES["nonlinearity"].phase_title("round 1") == "round 1"  # untitled phases read as they are
    assert DEFENSES["undefended"].suspicion_meaning is None  # no per-sample opinion: pages say so
    assert all(DEFENSES[name].suspicion_meaning for name in ("cbd", "abl", "nonlinearity"))
    assert defense_or_none("a-future-defense") is None and defense_or_none(None) is None


@pytest.mark.parametrize("shape", [(28, 28, 1), (32, 32, 3)])
@pytest.mark.parametrize("attack", list(ATTACKS.values()), ids=list(ATTACKS))
def test_every_attack_previews_its_trigger(attack, shape):
    preview = attack.trigger_preview(attack.resolve(shape, {}), shape)
    assert attack.title and preview.sentence
    assert len(preview.images) == len(preview.captions) >= 1
    for image in preview.images:
        assert image.dtype == np.uint8 and image.shape[:2] == shape[:2]
    # A patch attack says so (pages outline it); the others say they have none.
    assert ("patch" in preview.sentence) and (attack.patch == ("has no patch" not in preview.sentence))


def test_pages_never_branch_on_a_registered_name():
    names = "|".join(re.escape(n) for n in [*ATTACKS, *DEFENSES])
    branch = re.compile(rf'(==|!=|\bin)\s*[\(\[{{]?\s*"({names})"')
    found = [f"{path.name}:{number}: {line.strip()}" for path in sorted(PAGES.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if branch.search(line)]
    assert not found, "pages read the registries' metadata instead:\n" + "\n".join(found)


def _shown_strings(path: Path) -> list[tuple[int, str]]:
    """(line, text) of every string literal in a module that a page can show: docstrings left out."""
    import ast

    tree = ast.parse(path.read_text(), str(path))
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant) and isinstance(node.body[0].value.value, str)}
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]


def test_no_typed_list_of_registered_titles():
    """A sentence that lists attacks or defenses ("CBD, ABL, NONE or none") reads their titles from the
    registry, so one added later (ASD) is never left out; a page naming one of them is fine."""
    titles = sorted({*(a.title for a in ATTACKS.values()), *(d.title for d in DEFENSES.values())}, key=len,
                    reverse=True)
    title = "|".join(re.escape(t) for t in titles)
    listed = re.compile(rf"(?<![\w-])({title})(?![\w-])\s*(,|\bor\b|\band\b|/)\s*({title})(?![\w-])")
    sources = [*sorted(PAGES.rglob("*.py")), *(PAGES.parent / "cbd_core" / f for f in ("text.py", "lesson.py"))]
    found = [f"{path.name}:{line}: {text.strip()[:100]}" for path in sources for line, text in _shown_strings(path)
             if listed.search(text)]
    assert not found, "read these titles from the registries:\n" + "\n".join(found)
    assert listed.search("for any defense (CBD, ABL, NONE or none)") and listed.search("(Blend, SIG, WaNet)")
    assert not listed.search("the BadNets trigger") and not listed.search("CBD's weight")
