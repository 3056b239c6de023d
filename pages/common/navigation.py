"""The app's page list, defined once, and the guard every page calls first.

Why the guard: a `pages/` folder beside app.py is also Streamlit's older automatic multipage layout.
When the first request of a fresh server is a deep link (/embeddings?run=...), Streamlit resolves it
against that folder and runs the page file alone, before app.py has ever run: no page config, no
navigation, every file of the folder in the sidebar. `follow_app_navigation()` notices that (app.py
marks each session it has run in) and registers the full page list with `st.navigation`, then reruns;
the rerun goes through app.py and lands on the same page, now inside the app's navigation. Registering
a one-page list there instead shows "Page not found", which is why the list lives here, shared.
"""

from __future__ import annotations

import streamlit as st

# Set by app.py on every run; absent when a page file runs without it (the deep-link case above).
APP_RAN = "_app_navigation_ran"


def page_list() -> dict[str, list[st.Page]]:
    """Every page of the app, grouped as the sidebar shows them; the first page is the default.
    Paths are relative to app.py's folder."""
    return {
        "Learn": [
            st.Page("pages/lesson.py", title="Lesson", icon=":material/school:", default=True),
            st.Page("pages/overview.py", title="Overview", icon=":material/home:"),
            st.Page("pages/explorer.py", title="Explorer", icon=":material/tune:"),
        ],
        "Set up and train": [
            st.Page("pages/attack_lab.py", title="Attack lab", icon=":material/bug_report:"),
            st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
            st.Page("pages/runs.py", title="Runs", icon=":material/folder_open:"),
        ],
        "Look inside a run": [
            st.Page("pages/sample_weights.py", title="Sample weights", icon=":material/balance:"),
            st.Page("pages/embeddings.py", title="Embeddings", icon=":material/scatter_plot:"),
            st.Page("pages/attributions.py", title="Attributions", icon=":material/center_focus_strong:"),
            st.Page("pages/compare.py", title="Compare", icon=":material/leaderboard:"),
        ],
    }


def mark_app_ran() -> None:
    """Called by app.py before it runs the navigation."""
    st.session_state[APP_RAN] = True


def follow_app_navigation() -> None:
    """First line of every page: when this page file is running on its own (app.py has not run in this
    session), hand the request back to app.py's navigation and rerun; otherwise do nothing."""
    if st.session_state.get(APP_RAN):
        return
    st.navigation(page_list())
    st.rerun()
