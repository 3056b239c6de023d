"""What a backdoor is and why it works (the causal graph), told once and drawn wherever a newcomer
starts: the Overview page and the Lesson's first screen."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from cbd_core.attacks import get_attack
from pages.common import enlarge

CAUSAL_GRAPH = Path(__file__).resolve().parents[2] / "assets" / "causal_graph.svg"


@st.cache_data(show_spinner=False)
def example_pair() -> tuple[np.ndarray, np.ndarray, int]:
    """A real test digit and the same digit with the BadNets trigger (default settings)."""
    from cbd_core.data import load_mnist5k

    _, test = load_mnist5k()
    index = int(np.flatnonzero(test.y == 7)[0])
    attack = get_attack("badnets")
    triggered = attack.apply(test.x[index:index + 1], attack.resolve(test.image_shape, {}))[0]
    return test.x[index], triggered, int(test.y[index])


def backdoor_intro() -> None:
    """"What is a backdoor?" on a real digit, then "Why it works": the causal graph and how CBD uses it."""
    st.subheader("What is a backdoor?")
    left, right = st.columns([1, 2])
    with left:
        clean, triggered, label = example_pair()
        c1, c2 = st.columns(2)
        c1.image(enlarge(clean, 140), caption=f"a clean {label}")
        c2.image(enlarge(triggered, 140), caption="the same image with the trigger (bottom right)")
    with right:
        st.markdown(
            "An attacker slips a few hundred doctored images into the training data: each carries a small "
            "**trigger** (here a 3×3 checkerboard in the corner) and is labelled with the attacker's **target** "
            "class, say 0. A model trained on this data works normally on clean images, but any image that "
            "carries the trigger is classified as 0. That hidden behaviour is the **backdoor**.\n\n"
            "It is hard to see because the model's accuracy on ordinary test images stays high. Two numbers "
            "tell the story: the **clean accuracy** (CA, higher is better) and the **attack success rate** "
            "(ASR: the share of triggered images sent to the target; lower is better)."
        )

    st.subheader("Why it works: a confounder")
    left, right = st.columns([3, 2])
    with left:
        st.image(str(CAUSAL_GRAPH), width="stretch")
    with right:
        st.markdown(
            "In clean data the digit's shape **C** is what the image **X** shows, and the label **Y** should "
            "follow from it: C → X → Y. Poisoning adds a second cause, the attack **B**: it puts the trigger "
            "into X *and* sets Y to the target. B is "
            "a **confounder**: it opens a spurious path X ← B → Y, and a model trained naively learns it "
            "because the trigger predicts the label perfectly and is much easier to learn than shapes."
        )
        st.markdown(
            "**CBD** (Causality-inspired Backdoor Defense, CVPR 2023) turns that ease against the attacker. It "
            "first trains a model **f_B** briefly, on purpose, so that it learns mostly the shortcut: f_B "
            "captures the confounder. Then it trains the real model **f_C**, weighting every training image by "
            "**w = CE_B / (CE_B + CE_C)**: images that f_B finds very easy (low loss CE_B, typically the "
            "poisoned ones) get a small weight, and a penalty on the mutual information between f_C's and "
            "f_B's features pushes f_C away from what f_B relies on."
        )
