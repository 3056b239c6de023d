"""Backdoor Lab's dashboard entry point: `make app` (or `streamlit run app.py`).

Page config, the navigation over `pages/`, and starting the background worker; nothing else. Pages
only read run folders; training happens in the worker process (`cbd_core/jobs/`).

The page list is defined once, in `pages/common/navigation.py`; every page first calls its
`follow_app_navigation()`, so a deep link opened as the first request of a fresh server still renders
inside this navigation (see that module for why).
"""

from __future__ import annotations

import pages.warm  # noqa: F401  first: every heavy import, once per process (see pages/warm)
import streamlit as st

from cbd_core import jobs
from cbd_core.runs import runs_root
from pages.common.navigation import mark_app_ran, page_list
from pages.common.presentation import presentation_toggle, sidebar_state

st.set_page_config(page_title="Backdoor Lab", page_icon=":material/science:", layout="wide",
                   initial_sidebar_state=sidebar_state())


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

mark_app_ran()
presentation_toggle()  # in the sidebar of every page; the URL's ?present=1 keeps it
st.navigation(page_list()).run()
