"""Presentation mode: large fonts, images and plots for a projector, switched on every page at once.

One toggle in the sidebar (app.py draws it on every run, before the page). Its state lives in the
session and in the URL (`?present=1`), so a link the teacher shares opens in presentation mode too.
When it is on, a style sheet enlarges the text (Streamlit sizes its text in rem, so one root font size
moves it all) and pages read `scaled()` / `plotly_chart()` for what CSS cannot reach: image sizes
in pixels and Plotly's own fonts and heights.

    presentation_toggle()          the sidebar toggle and the style sheet (app.py)
    sidebar_state()                "collapsed" when presenting: app.py's page config
    presenting()                   whether it is on
    scaled(pixels)                 a size in pixels, enlarged when presenting
    plotly_chart(fig, ...)         st.plotly_chart with the figure's height and fonts enlarged
"""

from __future__ import annotations

from typing import Any

import streamlit as st

TOGGLE_KEY = "presentation_mode"
QUERY_KEY = "present"
SCALE = 1.3  # readable from the back of a classroom; at 1440x900 a Lesson step's picture stays in view
BASE_FONT_PX = 16  # Streamlit's root font size; its text is sized in rem from it
PLOT_FONT_PX = 12  # Plotly's default font size

# Everything Streamlit sizes in rem grows with the root font size, the sidebar's page list included.
_STYLE = f"""
<style>
html {{ font-size: {round(BASE_FONT_PX * SCALE)}px; }}
.block-container {{ padding-top: 2.5rem; }}
</style>
"""


def presenting() -> bool:
    """Whether presentation mode is on in this session (False outside a running app)."""
    try:
        return bool(st.session_state.get(TOGGLE_KEY, False))
    except Exception:  # no Streamlit session (a plain unit test or script)
        return False


def scale() -> float:
    return SCALE if presenting() else 1.0


def scaled(pixels: int | float) -> int:
    """`pixels` enlarged by the presentation scale when presenting, else unchanged."""
    return int(round(pixels * scale()))


def sidebar_state() -> str:
    """The sidebar's state for st.set_page_config: collapsed in presentation mode (the step gets the
    whole projector; the sidebar's arrow brings it back), else Streamlit's "auto". Read before the toggle
    is drawn: the session's choice, else the link's ?present=1."""
    wanted = st.session_state.get(TOGGLE_KEY, st.query_params.get(QUERY_KEY) == "1")
    return "collapsed" if wanted else "auto"


def toggle_key(on: bool) -> str:
    """The sidebar toggle's widget key: a new widget each time the mode flips, drawn with the mode as its
    value. (A toggle whose value was put into session state before it was drawn reached the browser
    unticked on the next click, which switched the mode off after a Lesson's Next.)"""
    return f"{TOGGLE_KEY}_toggle_{int(on)}"


def _flip() -> None:
    st.session_state[TOGGLE_KEY] = not st.session_state.get(TOGGLE_KEY, False)


def presentation_toggle() -> bool:
    """The sidebar toggle, synced with the URL's ?present=1 both ways, and the style sheet when on.
    Called by app.py on every run, so every page gets it and a page switch keeps it. The mode lives
    in session state under TOGGLE_KEY; the widget only flips it."""
    if TOGGLE_KEY not in st.session_state:  # a fresh session: the link decides
        st.session_state[TOGGLE_KEY] = st.query_params.get(QUERY_KEY) == "1"
    on = bool(st.session_state[TOGGLE_KEY])
    st.sidebar.toggle("Presentation mode", value=on, key=toggle_key(on), on_change=_flip,
                      help="Large text, images and charts for a projector. The page's link keeps it "
                           "(?present=1), so students who open it see the same.")
    if on:  # written on every run: a page that writes its own parameters (the Lesson's step) keeps this one
        st.query_params[QUERY_KEY] = "1"
    elif QUERY_KEY in st.query_params:
        del st.query_params[QUERY_KEY]
    if on:
        st.markdown(_STYLE, unsafe_allow_html=True)
    return on


def style_figure(fig: Any, height: int | None = None) -> Any:
    """The Plotly figure with `height` (or its own) and its fonts enlarged when presenting; returns it.
    Sizes are set on every text element (ticks, axis titles, legend, titles, annotations such as
    subplot titles), since Streamlit's chart theme fills in its own small sizes where a figure sets none."""
    k = scale()
    height = height or fig.layout.height
    if height:
        fig.update_layout(height=int(round(height * k)))
    if k != 1.0:
        size = round((fig.layout.font.size or PLOT_FONT_PX) * k)
        fig.update_layout(font={"size": size}, legend={"font": {"size": size}}, title={"font": {"size": size + 2}})
        fig.update_xaxes(tickfont={"size": size}, title_font={"size": size})
        fig.update_yaxes(tickfont={"size": size}, title_font={"size": size})
        fig.update_annotations(font={"size": size + 1})
        fig.update_traces(colorbar={"tickfont": {"size": size}, "title": {"font": {"size": size}}},
                          selector={"type": "heatmap"})
    return fig


def plotly_chart(fig: Any, height: int | None = None, **kwargs: Any) -> Any:
    """st.plotly_chart(fig, **kwargs) with the figure sized for presentation mode (`style_figure`)."""
    kwargs.setdefault("width", "stretch")
    return st.plotly_chart(style_figure(fig, height), **kwargs)
