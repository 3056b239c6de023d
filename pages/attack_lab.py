"""Attack lab: choose how the training data is poisoned and look at it before training anything.

Widgets at the top (dataset, attack, poison rate, target label and the attack's own parameters,
generated from its `Param`s); every choice goes through the same typed `RunConfig` as the CLI, so a
bad value is one message naming the field. Below: clean and poisoned training images side by side,
their amplified difference, the trigger on its own, and how many samples each class loses to the
target. The last valid choice is saved as an `AttackSettings` (pages/common/settings.py), which the
Train page takes as its defaults. Poisoning is cheap (milliseconds for 4,000 images) and cached per setting;
nothing here trains or writes into a run (uploads go to `<runs root>/uploads/`).
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
import json
from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from cbd_core.attacks import ATTACKS, Attack, get_attack
from cbd_core.attacks.base import amplified_difference
from cbd_core.config import RunConfig
from cbd_core.data import DATASETS, ImageSet, load_dataset, load_npz, upload_name
from cbd_core.text import either
from cbd_core.uploads import MAX_BYTES, save_upload
from pages.common import enlarge, explain, literal, page_errors, runs_root_path
from pages.common.navigation import follow_app_navigation
from pages.common.presentation import plotly_chart  # sized for presentation mode
from pages.common.settings import AttackSettings
from pages.common.widgets import changed_values, param_widget

follow_app_navigation()

DATASET_CHOICES = [*DATASETS, "npz"]
PREVIEW_SEED = 0  # the Train page chooses the run's seed; the preview shows seed 0's poisoned set
PAIRS_SHOWN = 6
THUMBNAIL = 112  # about this many pixels per preview image (28 px x 4)


def _init(key: str, value: Any) -> None:
    """Start a widget at `value` (the saved settings) unless it already has a state of its own."""
    if key not in st.session_state:
        st.session_state[key] = value


def _dataset_label(name: str) -> str:
    if name == "npz":
        return "npz: upload your own .npz"
    return f"{name}: {DATASETS[name].description}"


# -- cached data -------------------------------------------------------------------------------

@st.cache_resource(show_spinner="Loading the dataset…", max_entries=2)
def _load(dataset: str, npz_path: str | None, _download: bool) -> tuple[ImageSet, ImageSet, np.ndarray | None]:
    """Train set, test set and (an npz that comes poisoned) its mask. Shared and read-only: the
    attack copies before it changes anything. (The leading underscore keeps `_download` out of the
    cache key: the files are the same whether or not they had to be fetched.)"""
    if dataset == "npz":
        return load_npz(npz_path)
    train, test = load_dataset(dataset, download=_download)
    return train, test, None


@st.cache_data(show_spinner=False, max_entries=32)
def _preview(dataset: str, npz_path: str | None, _download: bool, attack_name: str, poison_rate: float,
             target_label: int, params_json: str) -> dict[str, Any]:
    """What the page draws for one setting: a few poisoned samples and per-class counts (small)."""
    train, test, premade_mask = _load(dataset, npz_path, _download)
    params = json.loads(params_json)
    if premade_mask is not None:
        from cbd_core.pipeline import already_poisoned  # the same rule as a run of this data

        config = RunConfig(dataset=dataset, attack=attack_name, poison_rate=poison_rate, target_label=target_label,
                           seed=PREVIEW_SEED, attack_params=params, npz_path=npz_path)
        data = already_poisoned(train, test, premade_mask, config)
    else:
        data = get_attack(attack_name).poison(train, test, poison_rate, target_label, PREVIEW_SEED, params)
    poisoned = np.flatnonzero(data.is_poisoned)
    # a few poisoned samples spread over the set (it is ordered by class for mnist5k)
    spread = np.unique(np.linspace(0, len(poisoned) - 1, PAIRS_SHOWN).astype(int)) if len(poisoned) else []
    shown = poisoned[spread]
    classes = train.num_classes
    return {
        "premade": premade_mask is not None,
        "index": shown,
        "clean_x": train.x[shown],  # for premade data these are the poisoned images themselves
        "poisoned_x": data.train.x[shown],
        "labels_before": data.clean_train_labels[shown],
        "labels_after": data.train.y[shown],
        "n_poisoned": data.n_poisoned,
        "n_train": len(train),
        "n_triggered_test": len(data.test_triggered),
        "poisoned_by_class": np.bincount(data.clean_train_labels[poisoned], minlength=classes),
        "size_before": np.bincount(data.clean_train_labels, minlength=classes),
        "size_after": np.bincount(data.train.y, minlength=classes),
        "class_names": list(train.class_names),
        "params": data.params,
        "notes": list(data.notes),
        "image_shape": train.image_shape,
    }


# -- pictures ----------------------------------------------------------------------------------

def class_chart(preview: dict[str, Any], target_label: int) -> go.Figure:
    names = [str(n) for n in preview["class_names"]]
    change = preview["size_after"] - preview["size_before"]
    fig = go.Figure([
        go.Bar(name="poisoned samples (by original label)", x=names, y=preview["poisoned_by_class"],
               marker_color="#e45756"),
        go.Bar(name="change in class size after relabelling", x=names, y=change, marker_color="#9aa7b8"),
    ])
    fig.update_layout(barmode="group", height=320, margin=dict(t=30, b=10), xaxis_title="class",
                      yaxis_title="training samples", xaxis_type="category",
                      legend=dict(orientation="h", y=1.12))
    fig.add_annotation(x=names[target_label], y=max(int(change[target_label]), 0), text="target", showarrow=True,
                       arrowhead=2, ay=-30)
    return fig


def image_row(images: list[np.ndarray], captions: list[str]) -> None:
    """Small images in a row, each scaled up by a whole factor so single pixels stay sharp."""
    big = [enlarge(image, THUMBNAIL) for image in images]
    st.image(big, caption=captions, width=int(big[0].shape[1]) if big else "content")


def link_to_train() -> None:
    st.page_link("pages/train.py", label="Train a defense on this data →", icon=":material/model_training:")


def show_preview(preview: dict[str, Any], attack: Attack, params: dict[str, Any], target_label: int) -> None:
    """The pictures and the chart for one poisoned training set."""
    n_poisoned, n_train = preview["n_poisoned"], preview["n_train"]
    names = preview["class_names"]
    st.subheader("What the attack does to the training set")
    st.markdown(f"**{n_poisoned:,} poisoned of {n_train:,}** training images ({n_poisoned / n_train:.1%}); "
                f"{preview['n_triggered_test']:,} test images get the trigger to measure the attack.")
    for note in preview["notes"]:
        st.info(f"Note: {note}")
    target_name = names[target_label]
    if attack.clean_label and n_poisoned and n_poisoned == preview["size_before"][target_label]:
        st.warning(f"Every training image of the target class ({target_name}) carries the trigger: none is left "
                   f"clean, so no model (defended or not) sees what an unmarked {target_name} looks like.")

    if n_poisoned == 0:
        st.info("Nothing is poisoned at this rate: raise the poison rate to see the trigger at work.")
    else:
        def caption(i: int, poisoned: bool) -> str:
            before, after = names[preview["labels_before"][i]], names[preview["labels_after"][i]]
            if not poisoned:
                return f"clean · {before}"
            return f"poisoned · {before} → {after}" if before != after else f"poisoned · {after} (kept)"

        shown = range(len(preview["index"]))
        if preview["premade"]:
            image_row(list(preview["poisoned_x"]), [f"poisoned · {names[preview['labels_after'][i]]}" for i in shown])
            explain("Your file marks these samples as poisoned. It came poisoned, so there is no clean copy to "
                    "compare with, and the difference picture cannot be drawn.")
        else:
            st.markdown("**Clean and poisoned, side by side** (the same training samples; captions give the label)")
            image_row(list(preview["clean_x"]), [caption(i, False) for i in shown])
            image_row(list(preview["poisoned_x"]), [caption(i, True) for i in shown])
            explain("Top: training images as they were; bottom: the same images as the model will see them, "
                    + (f"with the trigger, and labels unchanged ({attack.title} is clean-label)." if attack.clean_label
                       else "with the trigger and the target label."))
            diff, gain = amplified_difference(preview["clean_x"], preview["poisoned_x"])
            st.markdown(f"**What changed** (|poisoned − clean|, brightened ×{gain:.0f})")
            image_row(list(diff), [f"sample {i}" for i in preview["index"]])
            faint = either([a.title for a in ATTACKS.values() if not a.patch], "and")  # whole-image triggers
            explain("Bright pixels are the ones the attack changed; the brightening makes even faint triggers "
                    f"({faint}) visible, so compare shapes, not brightness.")

    st.markdown("**The trigger on its own**")
    trigger = attack.trigger_preview(params, preview["image_shape"])
    image_row(trigger.images, trigger.captions)
    what = trigger.sentence
    if preview["premade"]:
        what += " Your data came poisoned: its own trigger may differ; this is the one the test set gets."
    explain(what)

    st.markdown("**Which classes lose samples to the target**")
    plotly_chart(class_chart(preview, target_label))
    gained = int(preview["size_after"][target_label] - preview["size_before"][target_label])
    explain(f"Target class {names[target_label]} gains {gained:,} samples "
            f"({int(preview['size_before'][target_label]):,} → {int(preview['size_after'][target_label]):,}). "
            + (f"{attack.title} is clean-label: it marks images already in the target class and relabels nothing."
               if attack.clean_label else
               "A dirty-label attack takes its samples from the other classes and relabels them as the target."))


# -- widgets -----------------------------------------------------------------------------------

def _stored_upload(kind: str, uploaded: Any) -> str | None:
    """The path of an uploaded file once stored (validated, by content hash); remembered per upload
    so a rerun does not hash a 200 MB file again."""
    if uploaded is None:
        return None
    memo = st.session_state.setdefault("attack_lab_uploads", {})
    memo_key = f"{kind}:{uploaded.file_id}"
    if memo_key not in memo:
        memo[memo_key] = str(save_upload(runs_root_path(), uploaded.getvalue(), kind, name=uploaded.name))
    return memo[memo_key]


def _earlier_upload(path: str | None, what: str, forget_key: str) -> str | None:
    """An upload from an earlier visit (the uploader forgets its file when the page is left)."""
    if not path or not Path(path).is_file():
        return None
    if st.checkbox(f"Forget the {what} uploaded earlier", key=forget_key):
        return None
    st.caption(f"Using the {what} uploaded earlier ({literal(upload_name(path) or Path(path).name)}); "
               "upload another to replace it.")
    return path


def param_widgets(attack: Attack, image_shape: tuple[int, int, int], saved: dict[str, Any]) -> dict[str, Any]:
    """One widget per parameter of the attack; returns the values that differ from the defaults
    (so the Train page gets the defaults of whatever image size it trains on). A parameter given as an
    uploaded file (`Param.upload`) gets an uploader instead."""
    defaults = attack.defaults(image_shape)
    shape_tag = "x".join(map(str, image_shape))
    typed = [p for p in attack.params if not p.upload]
    chosen: dict[str, Any] = {}
    for param, column in zip(typed, st.columns(max(1, len(typed))) if typed else []):
        with column:
            chosen[param.name] = param_widget(param, defaults.get(param.name),
                                              f"attack_lab_{attack.name}_{param.name}_{shape_tag}",
                                              initial=saved.get(param.name, defaults.get(param.name)))
    overrides = changed_values(chosen, defaults)
    for param in attack.params:
        if param.upload:
            uploaded = st.file_uploader(f"{param.help[0].upper() + param.help[1:]} (optional)", type=list(param.upload),
                                        key=f"attack_lab_{attack.name}_{param.name}_upload",
                                        max_upload_size=MAX_BYTES["pattern"] // 2**20)
            path = _stored_upload("pattern", uploaded) or \
                _earlier_upload(saved.get(param.name), "uploaded file", f"attack_lab_forget_{param.name}")
            if path:
                overrides[param.name] = path
    return overrides


# -- the page ----------------------------------------------------------------------------------

st.title("Attack lab")
st.markdown("Choose how the training data is poisoned and look at it before training anything: which "
            "images carry the trigger, what the trigger looks like, and which classes it takes samples from.")

saved = AttackSettings.current()
_init("attack_lab_dataset", saved.dataset if saved.dataset in DATASET_CHOICES else "mnist5k")
_init("attack_lab_attack", saved.attack if saved.attack in ATTACKS else "badnets")
_init("attack_lab_rate", round(100 * float(saved.poison_rate), 1))
_init("attack_lab_target", int(saved.target_label))

left, right = st.columns(2)
dataset = left.selectbox("Dataset", DATASET_CHOICES, format_func=_dataset_label, key="attack_lab_dataset",
                         help="mnist5k is built in and works offline; the others are read from disk (or downloaded).")
attack_name = right.selectbox("Attack", list(ATTACKS), key="attack_lab_attack",
                              format_func=lambda name: f"{ATTACKS[name].title}: {ATTACKS[name].description}")
left, right = st.columns(2)
rate_percent = left.slider("Poison rate (% of the whole training set)", 0.0, 50.0, step=0.5, format="%.1f%%",
                           key="attack_lab_rate")
target_label = int(right.number_input("Target label", min_value=0, step=1, key="attack_lab_target",
                                      help="The class every triggered image is pushed to."))
poison_rate = round(rate_percent / 100, 4)
attack = ATTACKS[attack_name]

npz_path: str | None = None
download = False
if dataset == "npz":
    uploaded_npz = st.file_uploader(
        "Your dataset (.npz)", type=["npz"], key="attack_lab_npz_upload", max_upload_size=MAX_BYTES["dataset"] // 2**20,
        help="x: (N, H, W[, C]) uint8 images, y: (N,) integer labels; optional is_poisoned (N,) bool for data "
             "that comes poisoned, and x_test / y_test.")
    with page_errors():
        npz_path = _stored_upload("dataset", uploaded_npz) or \
            _earlier_upload(saved.npz_path, "dataset", "attack_lab_forget_npz")
elif not DATASETS[dataset].offline:
    download = st.checkbox("Download it if it is not on disk (needs the internet)", key="attack_lab_download")

with page_errors():
    if dataset == "npz" and not npz_path:
        st.info("Upload a .npz file above to see it poisoned.")
        st.stop()
    if dataset == "npz":
        train_set, _, _ = _load(dataset, npz_path, False)
        image_shape, num_classes = train_set.image_shape, train_set.num_classes
    else:
        image_shape, num_classes = DATASETS[dataset].image_shape, DATASETS[dataset].num_classes
    st.subheader(f"{attack.title} parameters")
    saved_params = saved.attack_params if saved.attack == attack_name else {}
    attack_params = param_widgets(attack, image_shape, saved_params)

    config = RunConfig(dataset=dataset, attack=attack_name, poison_rate=poison_rate, target_label=target_label,
                       attack_params=attack_params, npz_path=npz_path).validated(image_shape, num_classes)
    AttackSettings(dataset=dataset, attack=attack_name, poison_rate=poison_rate, target_label=target_label,
                   attack_params=attack_params, npz_path=npz_path).save()

    with page_errors():  # a dataset that is not on disk: say so, keep the settings and the link
        preview = _preview(dataset, npz_path, download, attack_name, poison_rate, target_label,
                           json.dumps(attack_params, sort_keys=True))
        show_preview(preview, attack, config.attack_params, target_label)
    link_to_train()
