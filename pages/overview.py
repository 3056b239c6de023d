"""Overview: what a backdoor is (shown on real digits), the causal graph of poisoned data, how CBD uses
it, and the Quick demo button that queues the preset run and opens its live progress.
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)

import json

import streamlit as st

from cbd_core import jobs, verdicts
from cbd_core.attacks import ATTACKS
from cbd_core.config import RunConfig, quick_demo_config
from cbd_core.jobs.settings import device_key
from cbd_core.run_index import scan
from cbd_core.timing import duration_text, typical_seconds
from cbd_core.presets import PRESETS
from pages.common import (defending_defenses, defense_title, page_errors, runs_root_path, runs_stamp,
                          set_active_run)
from pages.common.intro import backdoor_intro
from pages.common.navigation import follow_app_navigation

follow_app_navigation()


@st.cache_data(show_spinner=False, max_entries=64)
def _typical_pair_seconds(root: str, config_json: str, stamp: tuple[tuple[str, int], ...]) -> float | None:
    """Seconds the demo run and its undefended baseline usually train together on this machine, from
    the finished runs under the root (`timing.typical_seconds`); None when either has nothing to go by."""
    config = json.loads(config_json)
    pool = scan(root)
    device = device_key(RunConfig.from_dict(config))
    both = [typical_seconds(c, device, root, pool) for c in (config, verdicts.baseline_config(config))]
    return None if None in both else sum(both)


def demo_duration(demo: RunConfig) -> str:
    """" (about 40 s for both runs, judged from runs finished here)", or "" when no run has finished on
    this machine: a promise read from measurements, never a typed figure (machines differ 2x)."""
    root = runs_root_path()
    seconds = _typical_pair_seconds(str(root), json.dumps(demo.to_dict(), sort_keys=True), runs_stamp(root))
    if seconds is None:
        return ""
    return f" (about {duration_text(seconds)} for it and its undefended twin, judged from runs finished here)"

st.title("Backdoor Lab")
st.write("A hands-on look at **backdoor attacks** on image classifiers and at **CBD**, a defense that "
         "trains a model to ignore them.")

with page_errors():
    # First on the page, so the button is on screen at 1440x900 without scrolling.
    with st.container(border=True):
        words, button = st.columns([4, 1], vertical_alignment="center")
        demo = quick_demo_config()
        defense = defense_title(demo.defense)
        words.markdown(f"**Try it:** the **Quick demo** poisons {demo.poison_rate:.0%} of the embedded MNIST digits "
                       f"with the {ATTACKS[demo.attack].title} trigger (target {demo.target_label}) and trains "
                       f"{defense} on them in the background{demo_duration(demo)}, then the same data without a "
                       f"defense, so the verdict can say what {defense} cost. The **Train** page shows it live; the "
                       "**Lesson** then walks through it step by step.")
        if button.button("▶ Quick demo", type="primary", width="stretch"):
            with st.spinner("Queueing the demo run…"):
                # with the undefended run it is measured against
                run = jobs.submit_with_baseline(quick_demo_config(), runs_root_path())[0].run
            set_active_run(run.run_id)
            # A page switch starts the next page with the URL it is given: ?run= must be passed on, or the
            # Train page's address (copied to another screen) would not name the demo.
            st.switch_page("pages/train.py", query_params={"run": run.run_id})

    backdoor_intro()

    st.subheader("One run per attack")
    st.markdown("Each preset is one attack at one poison rate, with what to look for; the **Lesson** walks a "
                "class through a finished run of it step by step.")
    st.page_link("pages/lesson.py", label="Open the Lesson →", icon=":material/school:")
    preset = st.selectbox("Preset", list(PRESETS.values()), format_func=lambda p: p.title, key="overview_preset")
    st.info(preset.look_for)
    if st.button("Queue this preset", key="queue_preset"):
        with st.spinner("Queueing the preset and its undefended baseline…"):
            run = jobs.submit_with_baseline(preset.config(), runs_root_path())[0].run
        set_active_run(run.run_id)
        # A page switch starts the next page with the URL it is given: ?run= must be passed on, or the
        # Train page's address (copied to another screen) would not name the demo.
        st.switch_page("pages/train.py", query_params={"run": run.run_id})
    st.markdown("Or set things up yourself: **Attack lab** to choose and preview an attack, **Train** for any "
                f"defense ({defending_defenses()}) or none, then **Sample weights**, **Embeddings** and "
                "**Attributions** to look inside a finished run, and **Compare** to put runs side by side.")
