"""Every attack in `ATTACKS`: whom it poisons, what it leaves alone, its trigger, and its input checks."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from cbd_core.attacks import ATTACKS, get_attack
from cbd_core.attacks.badnets import checkerboard
from cbd_core.attacks.sig import sinusoid
from cbd_core.data import ImageSet
from cbd_core.errors import UserInputError

DIRTY = [name for name, a in ATTACKS.items() if not a.clean_label]
TARGET = 3


def test_registry():
    # the registry finds every attack module (more may be added without touching this test)
    assert {"badnets", "blend", "trojan", "sig", "wanet"} <= set(ATTACKS)
    assert ATTACKS["sig"].clean_label and not ATTACKS["badnets"].clean_label
    with pytest.raises(UserInputError) as err:
        get_attack("nope")
    assert err.value.field == "attack"


@pytest.mark.parametrize("name", DIRTY)
@pytest.mark.parametrize("rate", [0.0, 0.05, 0.1, 0.37])
def test_dirty_label_poisons_exact_count(tiny_sets, name, rate):
    train, test = tiny_sets
    data = ATTACKS[name].poison(train, test, rate, TARGET, seed=1)
    wanted = int(round(rate * len(train)))
    assert data.is_poisoned.dtype == np.bool_ and data.is_poisoned.shape == (len(train),)
    assert data.n_poisoned == wanted
    poisoned = data.is_poisoned
    # Only samples outside the target class are chosen, and every one of them is relabelled.
    assert np.all(train.y[poisoned] != TARGET)
    assert np.all(data.train.y[poisoned] == TARGET)
    # Every poisoned image carries a visible change.
    assert np.all((data.train.x[poisoned] != train.x[poisoned]).any(axis=(1, 2, 3)))
    # The rest keeps its labels, and its images but for those the attack reports it also changed (cover
    # or noise samples that keep their label).
    rest = ~poisoned & ~data.also_changed
    np.testing.assert_array_equal(data.train.x[rest], train.x[rest])
    np.testing.assert_array_equal(data.train.y[~poisoned], train.y[~poisoned])
    np.testing.assert_array_equal(data.clean_train_labels, train.y)
    assert not (data.also_changed & poisoned).any()
    assert data.train.x.dtype == np.uint8 and data.train.x.shape == train.x.shape
    assert not [note for note in data.notes if "eligible" in note]


@pytest.mark.parametrize("name", DIRTY)
def test_dirty_label_capped_by_candidates(name):
    # 20 images, 15 of them in the target class: asking for 50% (10) can only poison the other 5.
    rng = np.random.default_rng(0)
    y = np.array([TARGET] * 15 + [0, 1, 2, 4, 5])
    train = ImageSet(rng.integers(0, 256, (20, 12, 12, 1), dtype=np.uint8), y, 10)
    test = ImageSet(rng.integers(0, 256, (10, 12, 12, 1), dtype=np.uint8), np.arange(10), 10)
    data = ATTACKS[name].poison(train, test, 0.5, TARGET, seed=0)
    assert data.n_poisoned == 5
    assert np.all(data.is_poisoned == (y != TARGET))
    assert len([note for note in data.notes if "eligible" in note]) == 1 and "only 5" in data.notes[0]


@pytest.mark.parametrize("rate", [0.02, 0.05])
def test_sig_clean_label(tiny_sets, rate):
    train, test = tiny_sets
    data = ATTACKS["sig"].poison(train, test, rate, TARGET, seed=0)
    assert data.n_poisoned == int(round(rate * len(train)))
    assert np.all(train.y[data.is_poisoned] == TARGET)  # only target-class images carry the signal
    np.testing.assert_array_equal(data.train.y, train.y)  # clean-label: no label changes at all
    np.testing.assert_array_equal(data.train.x[~data.is_poisoned], train.x[~data.is_poisoned])
    changed = (data.train.x != train.x).any(axis=(1, 2, 3))
    np.testing.assert_array_equal(changed, data.is_poisoned)
    assert data.notes == []


def test_sig_capped_by_target_class(tiny_sets):
    train, test = tiny_sets
    n_target = int((train.y == TARGET).sum())
    data = ATTACKS["sig"].poison(train, test, 0.3, TARGET, seed=0)  # wants 90 of a class of 30
    assert n_target < round(0.3 * len(train))
    assert data.n_poisoned == n_target
    np.testing.assert_array_equal(data.is_poisoned, train.y == TARGET)
    np.testing.assert_array_equal(data.train.y, train.y)
    assert len(data.notes) == 1 and str(n_target) in data.notes[0]


@pytest.mark.parametrize("name", list(ATTACKS))
def test_seed_fixes_the_poisoned_set(tiny_sets, name):
    train, test = tiny_sets
    attack = ATTACKS[name]
    rate = 0.05 if attack.clean_label else 0.1  # half the target class: two seeds choose differently
    a = attack.poison(train, test, rate, TARGET, seed=7)
    b = attack.poison(train, test, rate, TARGET, seed=7)
    c = attack.poison(train, test, rate, TARGET, seed=8)
    np.testing.assert_array_equal(a.is_poisoned, b.is_poisoned)
    np.testing.assert_array_equal(a.train.x, b.train.x)
    np.testing.assert_array_equal(a.train.y, b.train.y)
    np.testing.assert_array_equal(a.test_triggered.x, b.test_triggered.x)
    assert not np.array_equal(a.is_poisoned, c.is_poisoned)
    assert a.n_poisoned == c.n_poisoned
    # The trigger itself is fixed by the attack, not by the run's seed.
    np.testing.assert_array_equal(a.test_triggered.x, c.test_triggered.x)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_triggered_test_set(tiny_sets, name):
    train, test = tiny_sets
    data = ATTACKS[name].poison(train, test, 0.05, TARGET, seed=0)
    keep = np.flatnonzero(test.y != TARGET)
    np.testing.assert_array_equal(data.test_triggered_index, keep)
    assert len(data.test_triggered) == len(keep) == len(test) - int((test.y == TARGET).sum())
    assert np.all(data.test_triggered.y == TARGET)
    np.testing.assert_array_equal(data.test_triggered_true_labels, test.y[keep])
    assert np.all(data.test_triggered_true_labels != TARGET)
    np.testing.assert_array_equal(data.test_triggered.x, ATTACKS[name].apply(test.x[keep], data.params))
    assert data.test_triggered.x.dtype == np.uint8
    assert np.all((data.test_triggered.x != test.x[keep]).any(axis=(1, 2, 3)))
    # The clean test set is returned untouched, and the inputs are not modified in place.
    assert data.test is test
    assert data.test_triggered.num_classes == test.num_classes


@pytest.mark.parametrize("name", list(ATTACKS))
def test_inputs_not_modified(tiny_sets, name):
    train, test = tiny_sets
    x_before, y_before, tx_before = train.x.copy(), train.y.copy(), test.x.copy()
    ATTACKS[name].poison(train, test, 0.1, TARGET, seed=0)
    np.testing.assert_array_equal(train.x, x_before)
    np.testing.assert_array_equal(train.y, y_before)
    np.testing.assert_array_equal(test.x, tx_before)


@pytest.mark.parametrize("name", list(ATTACKS))
def test_trigger_region(name):
    attack = ATTACKS[name]
    for shape in [(28, 28, 1), (32, 32, 3)]:
        params = attack.resolve(shape, None)
        region = attack.trigger_region(shape, params)
        assert region.dtype == np.bool_ and region.shape == shape[:2]
        assert region.any()


def test_badnets_region_and_patch():
    attack = ATTACKS["badnets"]
    for size in (1, 3, 5):
        params = attack.resolve((28, 28, 1), {"size": size})
        region = attack.trigger_region((28, 28, 1), params)
        assert region.sum() == size * size
        assert region[28 - size:, 28 - size:].all()
        x = np.full((2, 28, 28, 1), 77, np.uint8)
        out = attack.apply(x, params)
        np.testing.assert_array_equal(out[:, 28 - size:, 28 - size:, 0], np.broadcast_to(checkerboard(size), (2, size, size)))
        np.testing.assert_array_equal(out[:, :28 - size], x[:, :28 - size])
        np.testing.assert_array_equal(out[:, :, :28 - size], x[:, :, :28 - size])
    params = attack.resolve((28, 28, 1), {"size": 4, "row": 0, "col": 2, "pattern": "white"})
    region = attack.trigger_region((28, 28, 1), params)
    expected = np.zeros((28, 28), bool)
    expected[0:4, 2:6] = True
    np.testing.assert_array_equal(region, expected)


def test_trojan_region_has_margin():
    attack = ATTACKS["trojan"]
    params = attack.resolve((28, 28, 1), None)
    size, margin = params["size"], params["margin"]
    assert (size, margin) == (7, 1)
    region = attack.trigger_region((28, 28, 1), params)
    assert region.sum() == size * size
    assert region[28 - margin - size:28 - margin, 28 - margin - size:28 - margin].all()
    assert not region[-1].any() and not region[:, -1].any()


def test_values_clip_instead_of_wrapping():
    bright = np.full((1, 8, 16, 1), 250, np.uint8)
    dark = np.full((1, 8, 16, 1), 5, np.uint8)
    sig = ATTACKS["sig"]
    params = sig.resolve((8, 16, 1), {"delta": 40, "frequency": 1})
    signal = sinusoid(16, 40, 1)
    up, down = signal > 6, signal < -6
    out_bright, out_dark = sig.apply(bright, params), sig.apply(dark, params)
    assert out_bright.dtype == np.uint8 and out_dark.dtype == np.uint8
    assert np.all(out_bright[0, :, up, 0] == 255)  # 250 + 40 clips to 255, not 34
    assert np.all(out_bright[0, :, down, 0] < 250)
    assert np.all(out_dark[0, :, down, 0] == 0)  # 5 - 40 clips to 0, not 221
    assert np.all(out_dark[0, :, up, 0] > 5)
    expected = np.clip(np.rint(bright.astype(np.float32) + signal[None, None, :, None]), 0, 255)
    np.testing.assert_array_equal(out_bright, expected.astype(np.uint8))
    for name in ATTACKS:
        for x in (bright, dark, np.zeros_like(dark), np.full_like(dark, 255)):
            out = ATTACKS[name].apply(np.repeat(x, 2, axis=0), ATTACKS[name].resolve((8, 16, 1), {"size": 2} if name in ("badnets", "trojan") else None))
            assert out.dtype == np.uint8 and out.shape == (2, 8, 16, 1)


@pytest.mark.parametrize("rate", [-0.01, 0.51, 0.7, 1.0])
def test_bad_poison_rate(tiny_sets, rate):
    train, test = tiny_sets
    for name in ATTACKS:
        with pytest.raises(UserInputError) as err:
            ATTACKS[name].poison(train, test, rate, TARGET, seed=0)
        assert err.value.field == "poison_rate"
        assert "poison_rate" in str(err.value)


@pytest.mark.parametrize("label", [-1, 10, 99])
def test_bad_target_label(tiny_sets, label):
    train, test = tiny_sets
    with pytest.raises(UserInputError) as err:
        ATTACKS["badnets"].poison(train, test, 0.1, label, seed=0)
    assert err.value.field == "target_label"
    assert "target_label" in str(err.value)


@pytest.mark.parametrize("name, params, field", [
    pytest.param("badnets", {"size": 40}, "badnets.size"),
    ("badnets", {"size": 40, "row": 0, "col": 0}, "badnets.size"),
    ("badnets", {"size": 0}, "badnets.size"),
    ("badnets", {"size": 2.5}, "badnets.size"),
    ("badnets", {"size": "big"}, "badnets.size"),
    ("badnets", {"size": 5, "row": 25}, "badnets.size"),
    ("badnets", {"pattern": "stripes"}, "badnets.pattern"),
    ("badnets", {"colour": 1}, "badnets.colour"),
    ("blend", {"alpha": -0.5}, "blend.alpha"),
    ("blend", {"alpha": 1.5}, "blend.alpha"),
    ("blend", {"alpha": float("nan")}, "blend.alpha"),
    ("trojan", {"size": 27, "margin": 5}, "trojan.size"),
    ("sig", {"delta": 0}, "sig.delta"),
    ("sig", {"frequency": 100}, "sig.frequency"),
    ("wanet", {"k": 1}, "wanet.k"),
    ("wanet", {"cross_ratio": -1}, "wanet.cross_ratio"),
    ("wanet", {"nope": 1}, "wanet.nope"),
])
def test_bad_params_name_the_field(tiny_sets, name, params, field):
    train, test = tiny_sets
    with pytest.raises(UserInputError) as err:
        ATTACKS[name].poison(train, test, 0.1, TARGET, seed=0, params=params)
    assert err.value.field == field
    # The message names the parameter (range errors) or at least the attack (fit errors, which
    # describe the patch / watermark that does not fit).
    message = str(err.value)
    assert field in message or message.startswith(f"{name}: ")


def test_params_are_typed(tiny_sets):
    train, test = tiny_sets
    data = ATTACKS["badnets"].poison(train, test, 0.1, TARGET, seed=0, params={"size": "4"})
    assert data.params["size"] == 4 and isinstance(data.params["size"], int)
    assert data.trigger_region.sum() == 16
    data = ATTACKS["blend"].poison(train, test, 0.1, TARGET, seed=0, params={"alpha": 1})
    assert isinstance(data.params["alpha"], float)


def test_wanet_cross_ratio(tiny_sets):
    train, test = tiny_sets
    plain = ATTACKS["wanet"].poison(train, test, 0.1, TARGET, seed=0)
    data = ATTACKS["wanet"].poison(train, test, 0.1, TARGET, seed=0, params={"cross_ratio": 2})
    n = data.n_poisoned
    assert n == 30
    np.testing.assert_array_equal(data.is_poisoned, plain.is_poisoned)  # noise samples are not "poisoned"
    np.testing.assert_array_equal(data.train.x[data.is_poisoned], plain.train.x[data.is_poisoned])
    changed = (data.train.x != train.x).any(axis=(1, 2, 3))
    noise = changed & ~data.is_poisoned
    assert 0.9 * 2 * n <= noise.sum() <= 2 * n
    # Noise samples keep their own labels, and differ from the exact trigger warp.
    np.testing.assert_array_equal(data.train.y[~data.is_poisoned], train.y[~data.is_poisoned])
    exact = ATTACKS["wanet"].apply(train.x[noise], data.params)
    assert np.mean((data.train.x[noise] != exact).any(axis=(1, 2, 3))) > 0.9
    # Without cross samples nothing outside the poisoned set moves.
    np.testing.assert_array_equal(plain.train.x[~plain.is_poisoned], train.x[~plain.is_poisoned])


def test_blend_with_user_pattern(tiny_sets, tmp_path):
    train, test = tiny_sets
    path = tmp_path / "white.png"
    Image.fromarray(np.full((10, 14, 3), 255, np.uint8)).save(path)
    data = ATTACKS["blend"].poison(train, test, 0.1, TARGET, seed=0,
                                   params={"alpha": 0.5, "pattern_path": str(path)})
    assert data.params["pattern_path"] == str(path)
    p = data.is_poisoned
    expected = np.clip(np.rint(0.5 * train.x[p].astype(np.float32) + 0.5 * 255), 0, 255).astype(np.uint8)
    np.testing.assert_array_equal(data.train.x[p], expected)
    default = ATTACKS["blend"].poison(train, test, 0.1, TARGET, seed=0, params={"alpha": 0.5})
    assert not np.array_equal(default.train.x[p], data.train.x[p])
    assert data.trigger_region.all()


def test_blend_missing_or_bad_pattern(tiny_sets, tmp_path):
    train, test = tiny_sets
    with pytest.raises(UserInputError) as err:
        ATTACKS["blend"].poison(train, test, 0.1, TARGET, seed=0, params={"pattern_path": str(tmp_path / "no.png")})
    assert err.value.field == "blend.pattern_path"
    assert "no.png" in str(err.value)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"this is not an image")
    with pytest.raises(UserInputError) as err:
        ATTACKS["blend"].poison(train, test, 0.1, TARGET, seed=0, params={"pattern_path": str(garbage)})
    assert err.value.field == "blend.pattern_path"


def test_colour_images():
    rng = np.random.default_rng(0)
    train = ImageSet(rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8), np.arange(60) % 6, 6)
    test = ImageSet(rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8), np.arange(12) % 6, 6)
    for name, attack in ATTACKS.items():
        data = attack.poison(train, test, 0.1, 0, seed=0)
        assert data.train.x.shape == train.x.shape and data.train.x.dtype == np.uint8
        assert data.n_poisoned == 6, name
        assert len(data.test_triggered) == 10
