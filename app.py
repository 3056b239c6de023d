"""Backdoor Lab's dashboard entry point: `make app` (or `streamlit run app.py`).

Page config, the navigation over `pages/`, and starting the background worker; nothing else. Pages
only read run folders; training happens in the worker process (`cbd_core/jobs.py`).
"""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="Backdoor Lab", page_icon="🧪", layout="wide")

PAGES = {
    "Learn": [st.Page("pages/overview.py", title="Overview", icon="🏠", default=True)],
    "Set up and train": [
        st.Page("pages/attack_lab.py", title="Attack lab", icon="🧨"),
        st.Page("pages/train.py", title="Train", icon="🏋️"),
        st.Page("pages/runs.py", title="Runs", icon="🗂️"),
    ],
    "Look inside a run": [
        st.Page("pages/sample_weights.py", title="Sample weights", icon="⚖️"),
        st.Page("pages/embeddings.py", title="Embeddings", icon="🗺️"),
        st.Page("pages/attributions.py", title="Attributions", icon="🔍"),
        st.Page("pages/compare.py", title="Compare", icon="📊"),
    ],
}

st.navigation(PAGES).run()
