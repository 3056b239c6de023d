"""Overview: what a backdoor is (shown on real digits), the causal graph of poisoned data, how CBD uses
it, and the Quick demo button that queues the preset run and opens its live progress.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import streamlit as st

from cbd_core import jobs, verdicts
from cbd_core.attacks import get_attack
from cbd_core.config import quick_demo_config
from cbd_core.presets import PRESETS
from pages.common import enlarge, page_errors, runs_root_path, set_active_run
from pages.common.navigation import follow_app_navigation

follow_app_navigation()

CAUSAL_GRAPH = Path(__file__).resolve().parents[1] / "assets" / "causal_graph.svg"


@st.cache_data(show_spinner=False)
def example_pair() -> tuple[np.ndarray, np.ndarray, int]:
    """A real test digit and the same digit with the BadNets trigger (default settings)."""
    from cbd_core.data import load_mnist5k

    _, test = load_mnist5k()
    index = int(np.flatnonzero(test.y == 7)[0])
    attack = get_attack("badnets")
    triggered = attack.apply(test.x[index:index + 1], attack.resolve(test.image_shape, {}))[0]
    return test.x[index], triggered, int(test.y[index])


st.title("Backdoor Lab")
st.write("A hands-on look at **backdoor attacks** on image classifiers and at **CBD**, a defense that "
         "trains a model to ignore them.")

with page_errors():
    # First on the page, so the button is on screen at 1440x900 without scrolling.
    with st.container(border=True):
        words, button = st.columns([4, 1], vertical_alignment="center")
        words.markdown("**Try it:** the **Quick demo** poisons 10% of the embedded MNIST digits with the BadNets "
                       "trigger (target 0) and trains CBD on them in the background (about 20 seconds on a laptop "
                       "CPU), then the same data without a defense (about 10 seconds), so the verdict can say what "
                       "CBD cost. The **Train** page shows it live; the **Lesson** then walks through it step by step.")
        if button.button("▶ Quick demo", type="primary", width="stretch"):
            with st.spinner("Queueing the demo run…"):
                run = jobs.submit(quick_demo_config(), runs_root_path())
                verdicts.ensure_baseline(run, runs_root_path())  # the undefended run it is measured against
            set_active_run(run.run_id)
            # A page switch starts the next page with the URL it is given: ?run= must be passed on, or the
            # Train page's address (copied to another screen) would not name the demo.
            st.switch_page("pages/train.py", query_params={"run": run.run_id})

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

    st.subheader("One run per attack")
    st.markdown("Each preset is one attack at one poison rate, with what to look for; the **Lesson** walks a "
                "class through a finished run of it step by step.")
    st.page_link("pages/lesson.py", label="Open the Lesson →", icon=":material/school:")
    preset = st.selectbox("Preset", list(PRESETS.values()), format_func=lambda p: p.title, key="overview_preset")
    st.info(preset.look_for)
    if st.button("Queue this preset", key="queue_preset"):
        with st.spinner("Queueing the preset and its undefended baseline…"):
            run = jobs.submit(preset.config(), runs_root_path())
            verdicts.ensure_baseline(run, runs_root_path())
        set_active_run(run.run_id)
        # A page switch starts the next page with the URL it is given: ?run= must be passed on, or the
        # Train page's address (copied to another screen) would not name the demo.
        st.switch_page("pages/train.py", query_params={"run": run.run_id})
    st.markdown("Or set things up yourself: **Attack lab** to choose and preview an attack, **Train** for any "
                "defense (CBD, ABL, NONE or none), then **Sample weights**, **Embeddings** and **Attributions** to "
                "look inside a finished run, and **Compare** to put runs side by side.")
