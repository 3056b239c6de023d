"""The Attack lab page: previews for every attack, validation as messages, the saved settings."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image
from streamlit.testing.v1 import AppTest

from cbd_core.attacks import ATTACKS
from cbd_core.uploads import save_upload
from conftest import app_at_page
from pages.common.settings import AttackSettings

SPREAD = np.arange(0, 4000, 13)[:300]  # mnist5k's training set is ordered by class: take every class


@pytest.fixture
def lab(monkeypatch, tmp_path, no_worker):
    """A fresh page over an empty runs root and an empty data folder (no torchvision files)."""
    import cbd_core.data

    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path / "runs"))
    monkeypatch.setattr(cbd_core.data, "DEFAULT_DATA_ROOT", tmp_path / "data")
    return app_at_page("attack_lab")


def captions(at: AppTest) -> list[str]:
    return [c for image in at.image for c in image.captions]


def test_default_page_previews_badnets_on_mnist5k(lab):
    at = lab.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="attack_lab_dataset").value == "mnist5k"
    assert at.selectbox(key="attack_lab_attack").value == "badnets"
    assert at.session_state["attack_settings"] == AttackSettings(dataset="mnist5k", attack="badnets", poison_rate=0.1,
                                                                 target_label=0, attack_params={}, npz_path=None)
    shown = captions(at)
    assert sum(c.startswith("clean") for c in shown) == 6
    assert sum(c.startswith("poisoned · ") and c.endswith("→ 0") for c in shown) == 6
    assert "the patch on a grey image" in shown
    assert len(at.get("plotly_chart")) == 1
    assert any("400 poisoned of 4,000" in m.value for m in at.markdown)
    assert any("gains 400 samples (400 → 800)" in c.value for c in at.caption)
    # BadNets' row and column default to "automatic" (blank), its size to 3
    assert at.number_input(key="attack_lab_badnets_row_28x28x1").value is None
    assert at.number_input(key="attack_lab_badnets_size_28x28x1").value == 3


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a != "badnets"])
def test_every_attack_renders(lab, attack):
    at = lab.run()
    at.selectbox(key="attack_lab_attack").set_value(attack).run()
    assert not at.exception and not at.error
    assert at.session_state["attack_settings"].attack == attack
    assert len(at.get("plotly_chart")) == 1
    assert len(at.image) >= 4  # clean, poisoned, difference, trigger
    if attack in ("sig", "wanet", "blend"):
        assert any("has no patch" in c.value for c in at.caption)
    if attack == "sig":  # clean-label: the target class keeps its size, every 0 is marked at 10%
        assert any("gains 0 samples" in c.value for c in at.caption)
        assert any("none is left clean" in w.value for w in at.warning)
    # Sentences name attacks from the registry: the clean-label one shown (SIG, Label-Consistent), and every
    # whole-image trigger among the faint ones (Adap-Blend included).
    said = [c.value for c in at.caption]
    title = ATTACKS[attack].title
    assert any(f"{title} is clean-label" in c for c in said) == ATTACKS[attack].clean_label
    [faint] = [c for c in said if "faint triggers" in c]
    assert all(a.title in faint for a in ATTACKS.values() if not a.patch)
    assert not any(a.title in faint for a in ATTACKS.values() if a.patch)


def test_parameters_are_saved_as_changes_from_the_defaults(lab):
    at = lab.run()
    at.number_input(key="attack_lab_badnets_size_28x28x1").set_value(4)
    at.number_input(key="attack_lab_badnets_row_28x28x1").set_value(0)
    at.slider(key="attack_lab_rate").set_value(5.0)
    at.number_input(key="attack_lab_target").set_value(3).run()
    assert not at.exception and not at.error
    settings = at.session_state["attack_settings"]
    assert settings.attack_params == {"size": 4, "row": 0}
    assert settings.poison_rate == 0.05 and settings.target_label == 3
    assert any("200 poisoned of 4,000" in m.value for m in at.markdown)
    assert sum(c.endswith("→ 3") for c in captions(at)) == 6


def test_patch_that_does_not_fit_is_an_error_not_a_traceback(lab):
    at = lab.run()
    good = at.session_state["attack_settings"]
    at.number_input(key="attack_lab_badnets_size_28x28x1").set_value(40).run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "badnets: a 40x40 patch at row -12, column -12 does not fit in a 28x28 image"]
    assert at.session_state["attack_settings"] == good  # the last valid choice is what the Train page gets
    assert not at.get("plotly_chart")


def test_target_label_outside_the_classes_is_an_error(lab):
    at = lab.run()
    at.number_input(key="attack_lab_target").set_value(10).run()
    assert not at.exception
    assert len(at.error) == 1 and at.error[0].value.replace("\\", "").startswith("target_label: 10 is outside [0, 9]")


def test_torchvision_dataset_not_on_disk_says_so(lab):
    at = lab.run()
    at.selectbox(key="attack_lab_dataset").set_value("mnist").run()
    assert not at.exception
    assert len(at.error) == 1
    assert at.error[0].value.startswith("dataset: mnist files not found")
    assert at.checkbox(key="attack_lab_download").value is False
    # The choice itself is valid: the Train page gets it (and can download the files).
    assert at.session_state["attack_settings"].dataset == "mnist"


def test_page_starts_from_the_saved_settings(lab):
    lab.session_state["attack_settings"] = AttackSettings(**{"dataset": "mnist5k", "attack": "trojan", "poison_rate": 0.2,
                                            "target_label": 2, "attack_params": {"size": 5}, "npz_path": None})
    at = lab.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="attack_lab_attack").value == "trojan"
    assert at.slider(key="attack_lab_rate").value == 20.0
    assert at.number_input(key="attack_lab_trojan_size_28x28x1").value == 5
    assert any("800 poisoned of 4,000" in m.value for m in at.markdown)


def test_uploaded_trigger_image_is_blended(lab, tmp_path):
    buffer = io.BytesIO()
    Image.fromarray(np.tile(np.arange(0, 256, 8, dtype=np.uint8), (32, 1))).save(buffer, format="PNG")
    pattern = save_upload(tmp_path / "runs", buffer.getvalue(), "pattern")
    lab.session_state["attack_settings"] = AttackSettings(**{"dataset": "mnist5k", "attack": "blend", "poison_rate": 0.1,
                                            "target_label": 0, "attack_params": {"pattern_path": str(pattern)},
                                            "npz_path": None})
    at = lab.run()
    assert not at.exception and not at.error
    assert at.session_state["attack_settings"].attack_params == {"pattern_path": str(pattern)}
    assert any(pattern.name in c.value for c in at.caption)  # "using the trigger image uploaded earlier"
    at.checkbox(key="attack_lab_forget_pattern_path").check().run()
    assert at.session_state["attack_settings"].attack_params == {}


def test_own_npz_dataset_previews(lab, tmp_path, mnist5k):
    train, _ = mnist5k
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=train.x[SPREAD, :, :, 0], y=train.y[SPREAD])
    path = save_upload(tmp_path / "runs", buffer.getvalue(), "dataset", name="my_digits.npz")
    lab.session_state["attack_settings"] = AttackSettings(**{"dataset": "npz", "attack": "badnets", "poison_rate": 0.1,
                                            "target_label": 0, "attack_params": {}, "npz_path": str(path)})
    at = lab.run()
    assert not at.exception and not at.error
    assert at.session_state["attack_settings"].npz_path == str(path)
    assert any("24 poisoned of 241" in m.value for m in at.markdown)  # ~80% of 300 kept for training
    # the earlier upload is called by its file's name, not the content hash it is stored under
    assert any("(my_digits)" in c.value for c in at.caption) and not any(path.name in c.value for c in at.caption)


def test_npz_that_comes_poisoned_shows_its_own_mask(lab, tmp_path, mnist5k):
    train, _ = mnist5k
    mask = np.zeros(300, bool)
    mask[::10] = True
    buffer = io.BytesIO()
    np.savez_compressed(buffer, x=train.x[SPREAD], y=train.y[SPREAD], is_poisoned=mask)
    path = save_upload(tmp_path / "runs", buffer.getvalue(), "dataset")
    lab.session_state["attack_settings"] = AttackSettings(**{"dataset": "npz", "attack": "badnets", "poison_rate": 0.1,
                                            "target_label": 0, "attack_params": {}, "npz_path": str(path)})
    at = lab.run()
    assert not at.exception and not at.error
    assert any("came poisoned" in i.value for i in at.info)
    assert any("no clean copy" in c.value for c in at.caption)


def test_npz_without_an_upload_asks_for_one(lab):
    at = lab.run()
    at.selectbox(key="attack_lab_dataset").set_value("npz").run()
    assert not at.exception and not at.error
    assert any("Upload a .npz" in i.value for i in at.info)


def test_zero_poison_rate_says_nothing_is_poisoned(lab):
    at = lab.run()
    at.slider(key="attack_lab_rate").set_value(0.0).run()
    assert not at.exception and not at.error
    assert any("Nothing is poisoned" in i.value for i in at.info)
    assert at.session_state["attack_settings"].poison_rate == 0.0
