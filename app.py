"""Backdoor Lab's dashboard entry point: `make app` (or `streamlit run app.py`).

The full dashboard (attack lab, live training, sample weights, embeddings, attributions) is being
built page by page over `cbd_core`; until it lands this page lists the runs in the runs root, read
only, and says how to make one. Pages never train and never write into a run.
"""

from __future__ import annotations

import streamlit as st

from cbd_core.runs import list_runs, runs_root

st.set_page_config(page_title="Backdoor Lab", page_icon="🧪", layout="wide")
st.title("Backdoor Lab")
st.write(
    "Explore defenses against backdoor (data-poisoning) attacks on image classifiers. "
    "**CBD** trains a deliberately backdoored model f_B to capture the trigger, and a second model "
    "f_C that learns the real task with per-sample weights w = CE_B / (CE_B + CE_C)."
)

root = runs_root()
runs = list_runs(root)
st.subheader(f"Runs in {root}")
if not runs:
    st.info("No runs yet. Make one from a terminal (works offline on the embedded MNIST subset):\n\n"
            "`.venv/bin/python -m cbd_core run --dataset mnist5k --attack badnets --poison-rate 0.1 --defense cbd`")
else:
    rows = []
    for run in runs:
        try:
            config, status, summary = run.config(), run.status(), run.summary() or {}
        except Exception as err:  # a half-deleted or hand-edited folder must not break the page
            rows.append({"run": run.run_id, "state": f"unreadable ({type(err).__name__})"})
            continue
        rows.append({
            "run": run.run_id, "state": status.get("state"), "dataset": config.get("dataset"),
            "attack": config.get("attack"), "poison rate": config.get("poison_rate"),
            "defense": config.get("defense"), "seed": config.get("seed"),
            "clean accuracy": summary.get("clean_accuracy"), "attack success rate": summary.get("attack_success_rate"),
            "robust accuracy": summary.get("robust_accuracy"), "seconds": summary.get("seconds"),
        })
    fraction = st.column_config.NumberColumn(format="%.3f")
    st.dataframe(rows, hide_index=True, use_container_width=True,
                 column_config={"clean accuracy": fraction, "attack success rate": fraction,
                                "robust accuracy": fraction,
                                "seconds": st.column_config.NumberColumn(format="%.0f")})
    st.caption("Clean accuracy: on untouched test images. Attack success rate: share of triggered test images "
               "that the model sends to the attacker's target label (lower is better for a defense).")
