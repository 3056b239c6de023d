"""Attribution maps, the trigger's share of them, and the trigger edits of the Attributions page."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from cbd_core.analysis.attributions import (
    METHODS,
    apply_run_trigger,
    attribution_map,
    attribution_maps,
    edit_trigger,
    last_conv_layer,
    mean_trigger_share,
    predict_proba,
    region_bbox,
    trigger_is_local,
    trigger_mass_share,
    triggered_test_images,
)
from cbd_core.attacks import get_attack
from cbd_core.errors import UserInputError
from cbd_core.models import build_model

# -- a model planted to look only at a corner patch --------------------------------------------

# Bottom-left rather than bottom-right: a map with rows and columns swapped would miss it.
PATCH_ROWS, PATCH_COLS = slice(25, 28), slice(0, 3)


def corner_region(h: int = 28, w: int = 28) -> np.ndarray:
    region = np.zeros((h, w), bool)
    region[PATCH_ROWS, PATCH_COLS] = True
    return region


class CornerDetector(nn.Module):
    """Class 1 when a checkerboard sits in the bottom-left 3x3 corner: a matched 3x3 filter read only
    at the patch's centre pixel, so nothing outside the patch can move the logits."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
        board = torch.tensor([[1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, -1.0, 1.0]])
        with torch.no_grad():
            self.conv.weight.copy_(board.view(1, 1, 3, 3))
        readout = torch.zeros(28, 28)
        readout[26, 1] = 1.0
        self.register_buffer("readout", readout)
        self.fc = nn.Linear(1, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.fc.bias.copy_(torch.tensor([2.0, -2.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = (torch.relu(self.conv(x)) * self.readout).sum(dim=(1, 2, 3))
        return self.fc(score[:, None])


def noisy_images(n: int, seed: int = 0, channels: int = 1, size: int = 28) -> np.ndarray:
    """Dim noise with a bright square somewhere: something besides the trigger to look at."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, size=(n, size, size, channels)).astype(np.uint8)
    for i in range(n):
        r, c = rng.integers(0, size - 10, 2)
        x[i, r:r + 6, c:c + 6] = 255
    return x


def with_patch(x: np.ndarray) -> np.ndarray:
    out = x.copy()
    board = np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]], np.uint8)
    out[:, PATCH_ROWS, PATCH_COLS, :] = board[None, :, :, None]
    return out


@pytest.fixture(scope="module")
def corner_model() -> nn.Module:
    return CornerDetector().eval()


def test_planted_model_classifies_by_the_patch(corner_model):
    clean = noisy_images(20)
    assert (predict_proba(corner_model, with_patch(clean)).argmax(1) == 1).all()
    assert (predict_proba(corner_model, clean).argmax(1) == 0).all()


@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_most_attribution_mass_lies_on_the_patch_the_model_relies_on(corner_model, method):
    images = with_patch(noisy_images(10, seed=1))
    region = corner_region()
    for image in images[:3]:
        share = trigger_mass_share(attribution_map(corner_model, image, None, method), region)
        assert share > 0.9, share
    assert mean_trigger_share(corner_model, images, region, method, target=1) > 0.9


def test_occlusion_finds_the_patch(corner_model):
    region = corner_region()
    share = mean_trigger_share(corner_model, with_patch(noisy_images(5, seed=2)), region, "occlusion", target=1)
    # Occlusion windows (4x4) overlap the patch's border, so some mass spills just outside it.
    assert share > 20 * region.mean(), share


# -- every method on every model ---------------------------------------------------------------

@pytest.mark.parametrize("model_name,shape,methods", [
    ("cnn", (28, 28, 1), list(METHODS)),
    ("wrn-16-1", (32, 32, 3), list(METHODS)),
    # ResNet-18 is slow on a CPU: one backward each for the gradient methods keeps this quick.
    ("preact-resnet18", (32, 32, 3), ["saliency", "grad_cam"]),
])
def test_every_method_gives_a_finite_non_negative_map(model_name, shape, methods):
    torch.manual_seed(0)
    model = build_model(model_name, shape[2], 10).eval()
    image = noisy_images(1, channels=shape[2], size=shape[0])[0]
    for method in methods:
        attr = attribution_map(model, image, None, method)
        assert attr.shape == shape[:2], (method, attr.shape)
        assert np.isfinite(attr).all() and (attr >= 0).all(), method
        assert attr.sum() > 0, method
    # The shared model is read, not changed: no gradients left on its weights, still in eval mode.
    assert all(p.grad is None for p in model.parameters())
    assert not model.training


def test_last_conv_layer_is_the_deepest_conv():
    cnn = build_model("cnn", 1, 10)
    assert last_conv_layer(cnn) is cnn.body[4]
    wrn = build_model("wrn-16-1", 3, 10)
    assert last_conv_layer(wrn) is wrn.blocks[-1].conv2
    resnet = build_model("preact-resnet18", 3, 10)
    assert last_conv_layer(resnet) is resnet.layers[-1].conv2


def test_batched_maps_match_single_maps_and_default_to_the_predicted_class():
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10).eval()
    images = noisy_images(4, seed=3)
    predicted = predict_proba(model, images).argmax(1)
    batched = attribution_maps(model, images, None, "saliency", batch_size=3)
    assert batched.shape == (4, 28, 28)
    for i, image in enumerate(images):
        np.testing.assert_allclose(batched[i], attribution_map(model, image, int(predicted[i]), "saliency"),
                                   rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(attribution_maps(model, images, predicted, "saliency"), batched, rtol=1e-4, atol=1e-7)


def test_unknown_method_is_a_user_error(corner_model):
    with pytest.raises(UserInputError, match="method"):
        attribution_map(corner_model, noisy_images(1)[0], None, "lime")


def test_predict_proba_shapes(corner_model):
    one = predict_proba(corner_model, noisy_images(1)[0])
    assert one.shape == (2,) and one.sum() == pytest.approx(1.0, abs=1e-6)
    assert predict_proba(corner_model, noisy_images(3)).shape == (3, 2)


# -- the trigger's share -----------------------------------------------------------------------

def test_trigger_mass_share_is_the_fraction_inside_the_region():
    attr = np.ones((4, 4))
    attr[0, 0] = 5.0
    region = np.zeros((4, 4), bool)
    region[:2, :2] = True
    assert trigger_mass_share(attr, region) == pytest.approx(8.0 / 20.0)
    assert np.isnan(trigger_mass_share(np.zeros((4, 4)), region))
    with pytest.raises(ValueError):
        trigger_mass_share(np.ones((3, 3)), region)


def test_backdoored_run_looks_at_the_trigger(finished_runs):
    """The undefended run learned BadNets: on triggered images its attention sits on the patch far
    more than the patch's share of the image."""
    from cbd_core.analysis import load_models
    from cbd_core.runs import RunDir

    root, ids = finished_runs
    run = RunDir.open(root, ids["undefended"])
    arrays = run.arrays("images")
    triggered, labels = triggered_test_images(arrays["test_x"], arrays["test_y"], run.config(), 100)
    assert (labels != run.config()["target_label"]).all()
    model = load_models(run)["model"]
    region = arrays["trigger_region"]
    for method in ("saliency", "integrated_gradients"):
        share = mean_trigger_share(model, triggered, region, method)
        assert share > 5 * region.mean(), (method, share, region.mean())


def test_triggered_test_images_skip_the_target_and_spread_over_classes():
    x = noisy_images(40, seed=4)
    y = np.repeat(np.arange(4), 10)  # sorted by class, as a run keeps them
    config = {"attack": "badnets", "attack_params": {}, "target_label": 0}
    triggered, labels = triggered_test_images(x, y, config, limit=9)
    assert len(triggered) == 9 and 0 not in labels and set(labels) == {1, 2, 3}
    assert (triggered[:, 25:, 25:, 0] == np.array([[255, 0, 255], [0, 255, 0], [255, 0, 255]])).all()
    badnets = get_attack("badnets")
    np.testing.assert_array_equal(apply_run_trigger(x[5], config),
                                  badnets.apply(x[5:6], badnets.resolve((28, 28, 1), {}))[0])


# -- editing the trigger -----------------------------------------------------------------------

def stamp_case(background: int = 0, channels: int = 1):
    """A 10x10 clean image and a 2x2 trigger at rows 7-8, columns 6-7."""
    clean = np.full((10, 10, channels), background, np.uint8)
    triggered = clean.copy()
    triggered[7:9, 6:8] = np.array([[10, 20], [30, 40]], np.uint8)[..., None]
    region = np.zeros((10, 10), bool)
    region[7:9, 6:8] = True
    return clean, triggered, region


def test_edit_trigger_identity_and_fade_to_clean():
    clean, triggered, region = stamp_case(background=100)
    image, new_region = edit_trigger(clean, triggered, region)
    np.testing.assert_array_equal(image, triggered)
    np.testing.assert_array_equal(new_region, region)
    image, new_region = edit_trigger(clean, triggered, region, opacity=0.0)
    np.testing.assert_array_equal(image, clean)
    np.testing.assert_array_equal(new_region, region)


def test_edit_trigger_fades_by_alpha_blending():
    clean, triggered, region = stamp_case(background=100)
    image, _ = edit_trigger(clean, triggered, region, opacity=0.5)
    np.testing.assert_array_equal(image[7:9, 6:8, 0], [[55, 60], [65, 70]])
    image[7:9, 6:8] = 100
    assert (image == 100).all()


def test_edit_trigger_moves_the_stamp():
    clean, triggered, region = stamp_case()
    image, new_region = edit_trigger(clean, triggered, region, dx=-3, dy=-2)
    expected = np.zeros((10, 10), np.uint8)
    expected[5:7, 3:5] = [[10, 20], [30, 40]]
    np.testing.assert_array_equal(image[..., 0], expected)
    np.testing.assert_array_equal(new_region, expected > 0)


def test_edit_trigger_resizes_about_the_centre_with_nearest_neighbours():
    clean, triggered, region = stamp_case()
    image, new_region = edit_trigger(clean, triggered, region, scale=2.0)
    expected = np.zeros((10, 10), np.uint8)
    expected[6:10, 5:9] = [[10, 10, 20, 20], [10, 10, 20, 20], [30, 30, 40, 40], [30, 30, 40, 40]]
    np.testing.assert_array_equal(image[..., 0], expected)
    np.testing.assert_array_equal(new_region, expected > 0)
    # Half size keeps every other pixel.
    big = np.zeros((10, 10, 1), np.uint8)
    big[2:6, 2:6, 0] = np.arange(1, 17).reshape(4, 4)
    image, new_region = edit_trigger(np.zeros_like(big), big, big[..., 0] > 0, scale=0.5)
    assert new_region.sum() == 4 and region_bbox(new_region) == (3, 3, 5, 5)
    np.testing.assert_array_equal(image[3:5, 3:5, 0], [[1, 3], [9, 11]])


def test_edit_trigger_clips_at_the_border():
    clean, triggered, region = stamp_case()
    image, new_region = edit_trigger(clean, triggered, region, dx=3)  # columns 9-10: only 9 is inside
    assert new_region.sum() == 2 and new_region[7:9, 9].all()
    np.testing.assert_array_equal(image[7:9, 9, 0], [10, 30])
    image, new_region = edit_trigger(clean, triggered, region, dx=5, dy=5)  # entirely outside
    assert not new_region.any()
    np.testing.assert_array_equal(image, clean)


def test_edit_trigger_keeps_the_region_shape_and_colour_channels():
    clean, triggered, region = stamp_case(background=50, channels=3)
    region[7, 7] = False  # an L-shaped trigger: the pixel at (7, 7) is not part of it
    triggered[7, 7] = 50
    image, new_region = edit_trigger(clean, triggered, region, dx=-6, dy=-7)
    assert image.shape == (10, 10, 3)
    np.testing.assert_array_equal(new_region[0:2, 0:2], [[True, False], [True, True]])
    np.testing.assert_array_equal(image[0:2, 0:2, 2], [[10, 50], [30, 40]])
    assert new_region.sum() == 3


def test_edit_trigger_rejects_bad_values():
    clean, triggered, region = stamp_case()
    with pytest.raises(UserInputError, match="opacity"):
        edit_trigger(clean, triggered, region, opacity=1.5)
    with pytest.raises(UserInputError, match="scale"):
        edit_trigger(clean, triggered, region, scale=0)


@pytest.mark.parametrize("attack,local", [("badnets", True), ("trojan", True), ("blend", False), ("sig", False),
                                          ("wanet", False)])
def test_trigger_is_local(attack, local):
    a = get_attack(attack)
    for shape in [(28, 28, 1), (32, 32, 3)]:
        assert trigger_is_local(a.trigger_region(shape, a.resolve(shape, None))) is local
    assert not trigger_is_local(np.zeros((28, 28), bool))


@pytest.mark.parametrize("h,w", [(28, 28), (32, 32), (30, 30), (28, 32), (64, 64), (5, 7)])
def test_occlusion_windows_reach_the_bottom_right_edge(h, w):
    from cbd_core.analysis.attributions import occlusion_grid

    window, stride = occlusion_grid(h, w)
    assert 2 <= window <= min(h, w) and 1 <= stride <= window
    assert (h - window) % stride == 0 and (w - window) % stride == 0


def test_trigger_shares_are_computed_once_and_stored(finished_runs, tmp_path):
    import shutil

    from cbd_core.analysis import load_models
    from cbd_core.analysis.attributions import (SHARES_FILE, compute_trigger_shares, mean_trigger_share,
                                                stored_trigger_shares, triggered_test_images)
    from cbd_core.runs import RunDir

    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    assert stored_trigger_shares(run) is None
    shares = compute_trigger_shares(run, methods=["saliency"])
    assert (run.path / SHARES_FILE).is_file() and stored_trigger_shares(run) == shares
    assert set(shares) == {"saliency"} and set(shares["saliency"]) == {"f_C", "f_B"}
    images = run.arrays("images")
    triggered, _ = triggered_test_images(images["test_x"], images["test_y"], run.config(), 100)
    expected = mean_trigger_share(load_models(run)["f_B"], triggered, images["trigger_region"], "saliency")
    assert shares["saliency"]["f_B"] == pytest.approx(expected)


# -- the example a page opens on ----------------------------------------------------------------------

def test_choose_example_wants_right_when_clean_and_fooled_when_triggered():
    from cbd_core.analysis.attributions import choose_example

    y = np.array([0, 1, 2, 3, 4, 5])  # target 0: image 0 never qualifies (triggering it shows nothing)
    clean = {"f_C": np.array([0, 7, 2, 3, 4, 5]),   # image 1 is a digit f_C gets wrong even clean
             "f_B": np.array([0, 1, 2, 9, 4, 5])}   # image 3 one that f_B gets wrong clean
    triggered = {"f_C": np.array([0, 1, 2, 3, 4, 5]),
                 "f_B": np.array([0, 0, 2, 0, 0, 0])}  # f_B sends 1, 3, 4 and 5 to the target; not 2
    assert choose_example(y, 0, clean, triggered, "f_B") == 4
    # Another target class: image 0 is now outside it, but f_B does not send it there.
    assert choose_example(y, 2, clean, {"f_B": np.array([1, 0, 2, 2, 2, 2])}) == 4
    assert choose_example(y, 2, clean, {"f_B": np.array([2, 0, 2, 2, 2, 2])}) == 0  # and now it does


def test_choose_example_falls_back_one_condition_at_a_time():
    from cbd_core.analysis.attributions import choose_example

    y = np.array([0, 1, 2, 3])
    clean = {"f_C": np.array([0, 1, 9, 9]), "f_B": np.array([0, 1, 2, 3])}
    never_fooled = {"f_B": np.array([1, 1, 2, 3])}
    assert choose_example(y, 0, clean, never_fooled) == 1  # right when clean is kept, "fooled" dropped
    wrong = {"f_C": np.array([5, 5, 5, 5])}
    assert choose_example(y, 0, wrong, never_fooled) == 1  # only "outside the target class" is left
    assert choose_example(np.zeros(3, int), 0, {"model": np.zeros(3, int)}, {"model": np.zeros(3, int)}) == 0
    # A run with one model: that model plays the backdoored one.
    assert choose_example(y, 0, {"model": y}, {"model": np.array([0, 1, 0, 3])}) == 2


def test_example_test_image_of_a_real_run_is_right_when_clean_and_fooled_when_triggered(finished_runs):
    from cbd_core.analysis import load_models
    from cbd_core.analysis.attributions import example_test_image
    from cbd_core.runs import RunDir

    root, ids = finished_runs
    run = RunDir(root / ids["cbd"])
    images, config = run.arrays("images"), run.config()
    models = load_models(run)
    index = example_test_image(models, images["test_x"], images["test_y"], config)
    image, label = images["test_x"][index], int(images["test_y"][index])
    assert label != config["target_label"]
    for model in models.values():
        assert int(np.argmax(predict_proba(model, image))) == label
    fooled = apply_run_trigger(image, config)
    assert int(np.argmax(predict_proba(models["f_B"], fooled))) == config["target_label"]


@pytest.mark.parametrize("attack,patch", [("badnets", True), ("trojan", True), ("blend", False), ("sig", False),
                                          ("wanet", False)])
def test_the_registry_says_which_triggers_are_patches(attack, patch):
    from cbd_core.analysis.attributions import trigger_is_patch

    assert get_attack(attack).patch is patch
    assert trigger_is_patch({"attack": attack}, np.zeros((28, 28), bool)) is patch
    # An attack the registry does not know is judged by its region's shape.
    corner = np.zeros((28, 28), bool)
    corner[-3:, -3:] = True
    assert trigger_is_patch({"attack": "someone-elses"}, corner) is True


def test_predictions_follow_a_model_whose_weights_change():
    """The folded copy a page predicts with is kept per model, and remade when the model changes."""
    torch.manual_seed(0)
    model = build_model("cnn", 1, 10).eval()
    image = (np.random.default_rng(0).random((28, 28, 1)) * 255).astype(np.uint8)
    before = predict_proba(model, image)
    assert np.array_equal(predict_proba(model, image), before)
    with torch.no_grad():
        model.fc.bias.copy_(torch.arange(10.0) * 5)
    after = predict_proba(model, image)
    assert not np.allclose(after, before) and after.argmax() == 9


def test_attribution_views_hold_what_the_page_would_compute(finished_runs, tmp_path):
    import shutil

    from cbd_core.analysis import load_models
    from cbd_core.analysis.attributions import (VIEWS_FILE, apply_run_trigger, attribution_map,
                                                compute_attribution_views, edit_trigger, predict_proba, view_key)
    from cbd_core.runs import RunDir

    root, ids = finished_runs
    shutil.copytree(root / ids["cbd"], tmp_path / ids["cbd"])
    run = RunDir(tmp_path / ids["cbd"])
    compute_attribution_views(run)
    views = run.arrays(VIEWS_FILE)
    images, config, models = run.arrays("images"), run.config(), load_models(run)
    n = len(images["test_x"])
    assert len(views[view_key("map", "clean", "f_B", "grad_cam")]) == n and 0 <= int(views["example"]) < n
    clean = images["test_x"][3]
    # The triggered image exactly as the page builds it with its sliders at rest.
    triggered, _ = edit_trigger(clean, apply_run_trigger(clean, config), images["trigger_region"].astype(bool))
    model = models["f_C"]
    np.testing.assert_allclose(views[view_key("map", "triggered", "f_C", "saliency")][3],
                               attribution_map(model, triggered, None, "saliency"), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(views[view_key("probs", "clean", "f_C")][3], predict_proba(model, clean), rtol=1e-5)
    # The Lesson's poisoned training image (marked on its maps): its pixels as trained, explained the same way.
    sample = int(views["train_example"])
    weights, embeddings = run.arrays("sample_weights"), run.arrays("embeddings")
    assert weights["is_poisoned"][sample] and sample in embeddings["index"]
    image = images["train_x"][int(np.flatnonzero(images["train_index"] == sample)[0])]
    np.testing.assert_allclose(views[view_key("map", "train", "f_B", "integrated_gradients")][0],
                               attribution_map(models["f_B"], image, None, "integrated_gradients"), rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(views[view_key("probs", "train", "f_C")][0], predict_proba(model, image), rtol=1e-5)


def test_the_training_example_is_a_poisoned_image_the_trigger_sends_to_the_target():
    from cbd_core.analysis.attributions import choose_training_example, training_example

    poisoned = np.array([0, 1, 1, 1, 0, 1], bool)
    truth = np.array([3, 0, 2, 5, 4, 6])  # sample 1 really is the target, 0
    index = np.array([0, 1, 2, 3, 4])  # the kept subset (sample 5 is not kept)
    # Sample 2 is outside the target but the backdoored model does not send it there; sample 3 is both.
    assert choose_training_example(index, poisoned, 0, truth, np.array([3, 0, 2, 0, 4])) == 3
    assert choose_training_example(index, poisoned, 0, truth, np.array([3, 0, 2, 2, 4])) == 2  # none fooled
    assert choose_training_example(index, poisoned, 0, None, None) == 1  # nothing known but the poison
    assert choose_training_example(index, np.zeros(6, bool), 0, truth) is None
    assert choose_training_example(np.array([7]), poisoned, 0, truth) is None  # an index past the record
    # Over a run's files: only images whose pixels were kept count.
    embeddings = {"index": index, "prediction_f_B": np.array([3, 0, 2, 0, 4])}
    weights = {"is_poisoned": poisoned, "original_label": truth}
    assert training_example(embeddings, weights, {"train_index": np.array([0, 1, 2, 3])}, 0, "f_B") == 3
    assert training_example(embeddings, weights, {"train_index": np.array([0, 1, 2])}, 0, "f_B") == 2
    assert training_example(embeddings, weights, {}, 0, "f_B") is None
