"""The registry contract, proved from outside: a toy attack and a toy defense, defined and registered here
(nowhere in the library), train real tiny runs, and every page, the Lesson, the verdict sentences and the
HTML report show them from what they declare: their titles, their preview, their model order, their
per-sample view and their diagnosis. If a page needed a branch on a defense's name to show a new one,
this file could not pass without editing it."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest

from cbd_core.attacks import ATTACKS, AttackPreset
from cbd_core.attacks.base import Attack
from cbd_core.defenses import DEFENSES, Defense, DefenseResult, ModelView, SampleView
from cbd_core.defenses.base import train_epoch
from cbd_core.params import Param
from cbd_core.training import cosine_lr, sgd
from conftest import ROOT, app_at_page, small_subset, train_runs

pytestmark = [pytest.mark.usefixtures("no_worker"), pytest.mark.slow]

TOY_ATTACK, TOY_DEFENSE = "toy_stripe", "toy_twins"
DIAGNOSIS = "The toy twins disagreed about every stripe."


class ToyStripe(Attack):
    """A white line along the top row: a patch, so pages outline it."""

    name = TOY_ATTACK
    title = "Toy stripe"
    description = "a white line along the top row; labels set to the target"
    preset = AttackPreset("Toy stripe: a line on top", 0.10, "A toy attack registered by a test.")
    patch = True
    params = (Param("rows", int, "rows of the stripe", 1, 4),)

    def defaults(self, image_shape):
        return {"rows": 1}

    def apply(self, x, params):
        out = x.copy()
        out[:, :params["rows"]] = 255
        return out


class ToyTwins(Defense):
    """Two plainly trained models, the right one delivered; its per-sample score is the delivered
    model's loss after each epoch (low = suspected), and the lowest tenth is "set aside"."""

    name = TOY_DEFENSE
    title = "Toy twins"
    description = "two plain models; the loss of the right one judges the samples"
    model_names = ("left", "right")
    delivered_model = "right"
    key_params = ("epochs",)
    phase_titles = {"right": "the right twin"}
    suspicion_meaning = "minus the right twin's loss"
    model_views = {"left": ModelView("left twin", "left map hint", "left attribution hint"),
                   "right": ModelView("right twin", "right map hint", "right attribution hint")}
    sample_view = SampleView("the twins' loss, epoch by epoch", "twin_loss", "twin loss", "low",
                             "Toy hint: the poison should sit on the left.", log_scale=True, first_row=1,
                             row_caption=lambda row: f"twin epoch {row + 1}", flagged="set_aside",
                             flagged_title="set aside", gallery_hint="Toy gallery hint.")
    params = (Param("epochs", int, "epochs of each twin", 1, 5), Param("batch_size", int, "batch size", 8, 512))

    def defaults(self, image_shape):
        return {"epochs": 2, "batch_size": 64}

    def total_epochs(self, params):
        return 2 * params["epochs"]

    def diagnosis(self, summary):
        return DIAGNOSIS

    def train(self, ctx):
        p = ctx.params
        steps = -(-len(ctx.train) // p["batch_size"])
        models, losses = {}, []
        for twin in self.model_names:
            model = ctx.build_model()
            optimizer = sgd(model, 0.05, 5e-4)
            generator = ctx.generator(len(models))
            for epoch in range(1, p["epochs"] + 1):
                train_epoch(ctx, model, optimizer, generator, lambda s: cosine_lr(s, steps * p["epochs"], 0.05),
                            (epoch - 1) * steps, twin, epoch, p["epochs"])
                if twin == self.delivered:
                    losses.append(ctx.per_sample_loss(model).cpu().numpy().astype(np.float32))
                ctx.end_epoch(twin, epoch, p["epochs"], model)
            models[twin] = model
        losses = np.stack(losses)
        set_aside = losses <= np.quantile(losses, 0.1, axis=1, keepdims=True)
        return DefenseResult(model=models["right"], other_models={"left": models["left"]}, suspicion=-losses[-1],
                             sample_record={"twin_loss": losses, "set_aside": set_aside})


@pytest.fixture(scope="module")
def toy_runs(tmp_path_factory, mnist5k):
    """The toy attack against the toy defense, CBD (the Lesson's defense) and no defense, each a finished
    run on 300 / 100 images; the toys stay registered for the module."""
    from cbd_core.config import RunConfig

    root = tmp_path_factory.mktemp("toy_runs")
    schedules = {TOY_DEFENSE: {"epochs": 1}, "undefended": {"epochs": 1, "batch_size": 64},
                 "cbd": {"backdoor_steps": 10, "backdoor_checkpoints": 2, "epochs": 1, "batch_size": 64}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(ATTACKS, TOY_ATTACK, ToyStripe())
        mp.setitem(DEFENSES, TOY_DEFENSE, ToyTwins())
        configs = {defense: RunConfig(dataset="mnist5k", attack=TOY_ATTACK, poison_rate=0.1, defense=defense,
                                      seed=0, device="cpu", embedding_samples=100, defense_params=params)
                   for defense, params in schedules.items()}
        yield root, train_runs(root, configs, small_subset(*mnist5k, 300, 100))


@pytest.fixture
def toys(toy_runs, monkeypatch):
    monkeypatch.setitem(ATTACKS, TOY_ATTACK, ToyStripe())
    monkeypatch.setitem(DEFENSES, TOY_DEFENSE, ToyTwins())
    root, ids = toy_runs
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(root))
    return root, ids


def text_of(at) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [i.value for i in at.info]
                     + [s.value for s in at.subheader] + [str(m.label) for m in at.metric])


PAGES = sorted(p.stem for p in (ROOT / "pages").glob("*.py"))


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_the_toy_run(toys, page):
    root, ids = toys
    at = app_at_page(page, ids[TOY_DEFENSE]).run()
    assert not at.exception, at.exception
    # The only red box allowed is the verdict's own (the toy run's backdoor persists).
    assert all(e.value.startswith("**Backdoor persists") for e in at.error), [e.value for e in at.error]


def test_the_toy_run_is_drawn_from_its_declarations(toys):
    from cbd_core.runs import RunDir

    root, ids = toys
    run = RunDir(root / ids[TOY_DEFENSE])
    assert run.model_names() == ["left", "right"]

    at = app_at_page("sample_weights", ids[TOY_DEFENSE]).run()
    text = text_of(at)
    assert "Toy twins: the twins' loss, epoch by epoch" in text and "Toy hint" in text
    assert "nothing to show" not in text
    assert not at.slider  # one epoch: a single row, nothing to slide through
    record = run.arrays("sample_weights")
    assert at.metric[0].value == f"{int(record['set_aside'][-1].sum()):,}"

    at = app_at_page("attributions", ids[TOY_DEFENSE]).run()
    shown = [m.value for m in at.markdown]
    assert shown.index("**left twin**") < shown.index("**right twin**")  # the declared order

    from cbd_core.analysis import load_models

    assert list(load_models(run)) == ["left", "right"]


def test_verdict_sentences_and_report_use_the_toy_declarations(toys):
    from cbd_core import verdicts
    from cbd_core.report import html_report
    from cbd_core.runs import RunDir

    root, ids = toys
    run = RunDir(root / ids[TOY_DEFENSE])
    summary = {**run.summary(), "attack_success_rate": 0.9}  # make it a failure, whatever it was
    assert verdicts.diagnosis(summary) == DIAGNOSIS
    assert verdicts.explain(summary)[0].startswith("The backdoor persists despite Toy twins")
    page = html_report(run)
    assert "Toy twins: the twins&#x27; loss, epoch by epoch" in page and page.count("<svg") == 2


def test_the_lesson_teaches_the_toy_attack(toys):
    root, ids = toys
    at = app_at_page("lesson", ids["cbd"]).run()
    assert not at.exception and not at.error
    assert "Toy stripe: a line on top, 10% poisoned" in [o for box in at.selectbox for o in box.options]


def test_attack_lab_previews_the_toy_attack(toys):
    at = app_at_page("attack_lab", session_state={"attack_lab_attack": TOY_ATTACK}).run()
    assert not at.exception and not at.error
    assert "the patch on a grey image" in [image.proto.imgs[0].caption for image in at.image]


# -- no module that shows runs knows a registered name -------------------------------------------------

# The Lesson teaches CBD itself (its presets are CBD runs and its steps speak of f_B and f_C), so it is
# the one view allowed to name CBD's models; everything else reads the registries.
SHOWN_BY = [*sorted((ROOT / "pages").rglob("*.py")), ROOT / "cbd_core" / "verdicts.py", ROOT / "cbd_core" / "report.py",
            *sorted((ROOT / "cbd_core" / "analysis").glob("*.py")), ROOT / "cbd_core" / "epoch_features.py",
            ROOT / "cbd_core" / "presets.py"]
TEACHES_CBD = {ROOT / "pages" / "lesson.py"}


def registered_words() -> set[str]:
    words = set(ATTACKS) | set(DEFENSES)
    for defense in DEFENSES.values():
        words |= set(defense.model_names) - {"model"}
        if defense.sample_view is not None:
            words |= {defense.sample_view.score, defense.sample_view.flagged} - {None}
    return words


def name_uses(path: Path, words: set[str], root: Path = ROOT) -> list[str]:
    """Where `path` compares with, indexes by, looks up or keys a dict on one of `words`: a branch on a
    registered name or on one defense's own array."""
    tree = ast.parse(path.read_text())
    found = []

    def hit(node: ast.AST) -> bool:
        return isinstance(node, ast.Constant) and node.value in words

    for node in ast.walk(tree):
        suspects = []
        if isinstance(node, ast.Compare):
            suspects = [node.left, *node.comparators]
            suspects += [e for c in suspects if isinstance(c, (ast.Tuple, ast.List, ast.Set)) for e in c.elts]
        elif isinstance(node, ast.Subscript):
            suspects = [node.slice]
        elif isinstance(node, ast.Dict):
            suspects = [k for k in node.keys if k is not None]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop"):
            suspects = node.args[:1]
        found += [f"{path.relative_to(root)}:{s.lineno}: {s.value!r}" for s in suspects if hit(s)]
    return found


def test_no_view_verdict_or_report_module_names_a_registered_attack_defense_or_model():
    words = registered_words()
    assert {"cbd", "f_B", "weights", "isolation_loss"} <= words  # the guard knows what to look for
    found = [f for path in SHOWN_BY if path not in TEACHES_CBD for f in name_uses(path, words)]
    assert not found, "read the registries' declarations instead:\n" + "\n".join(found)


def test_the_guard_catches_a_branch(tmp_path):
    sample = tmp_path / "page.py"
    sample.write_text('if defense == "cbd":\n    pass\nx = record["weights"]\ny = {"f_B": 1}.get("f_B")\n'
                      'default = "cbd"\n')  # a default value is no branch
    assert len(name_uses(sample, registered_words(), tmp_path)) == 4
