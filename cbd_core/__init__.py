"""Backdoor Lab's engine: poison a dataset, train a defense on it, record everything a run shows.

Nothing in this package imports Streamlit: the dashboard is a thin layer over it, and the CLI
(`python -m cbd_core`) runs the same code without a browser.
"""

__version__ = "0.1.0"
