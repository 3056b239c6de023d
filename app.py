"""Backdoor Lab's dashboard entry point: `make app` (or `streamlit run app.py`).

Page config, the navigation over `app_pages/`, and starting the background worker; nothing else. Pages
only read run folders; training happens in the worker process (`cbd_core/jobs/`).

The page files live in `app_pages/`, not `pages/`: Streamlit treats a `pages/` folder beside the
entry point as its older automatic multipage app, and a fresh browser session that opened a deep
link (/embeddings?run=...) then ran that page file alone, without this navigation and page config,
listing every file of the folder in the sidebar.
"""

from __future__ import annotations

import streamlit as st

from cbd_core import jobs
from cbd_core.runs import runs_root

st.set_page_config(page_title="Backdoor Lab", page_icon=":material/science:", layout="wide")


# The launcher owns the worker's lifetime: at most every 30 s, whoever visits, it marks runs whose
# owner is gone as failed and (re)starts the background worker; it never raises.
jobs.keep_workers_running(runs_root())


@st.cache_resource(show_spinner=False)
def one_torch_thread() -> None:
    """Pages run tiny inference (one image, a hundred at most) while the worker trains on every core:
    one thread each is measured 10-100x faster than two fighting the worker for the CPU."""
    import torch

    torch.set_num_threads(1)


one_torch_thread()

PAGES = {
    "Learn": [st.Page("app_pages/overview.py", title="Overview", icon=":material/home:", default=True)],
    "Set up and train": [
        st.Page("app_pages/attack_lab.py", title="Attack lab", icon=":material/bug_report:"),
        st.Page("app_pages/train.py", title="Train", icon=":material/model_training:"),
        st.Page("app_pages/runs.py", title="Runs", icon=":material/folder_open:"),
    ],
    "Look inside a run": [
        st.Page("app_pages/sample_weights.py", title="Sample weights", icon=":material/balance:"),
        st.Page("app_pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
        st.Page("app_pages/attributions.py", title="Attributions", icon=":material/center_focus_strong:"),
        st.Page("app_pages/compare.py", title="Compare", icon=":material/leaderboard:"),
    ],
}

st.navigation(PAGES).run()
