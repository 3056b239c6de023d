"""What the dashboard computes from a finished run: its models back, UMAP maps, attribution maps.

Nothing here trains or writes into a run except the embedding map, which the background worker
computes once per run (see `embeddings.py`). Everything takes a `RunDir` and reads its plain files.
"""

from __future__ import annotations

import torch.nn as nn

from ..errors import UserInputError
from ..defenses import model_order
from ..models import build_model
from ..runs import RunDir


def load_models(run: RunDir) -> dict[str, nn.Module]:
    """The run's trained models by name, in its defense's order (`defenses.model_order`: CBD's f_B then
    f_C; others: model), on the CPU in eval mode.

    Raises UserInputError when the run has no finished summary or its model files are unreadable."""
    summary = run.summary()
    if not summary:
        raise UserInputError(f"run {run.run_id} has not finished: it has no models yet", "run")
    names = run.model_names()
    if not names:
        raise UserInputError(f"run {run.run_id} has no saved models", "run")
    h, w, channels = summary["image_shape"]
    models: dict[str, nn.Module] = {}
    for name in model_order(summary.get("defense"), names):
        model = build_model(summary["model"], channels, summary["num_classes"])
        try:
            model.load_state_dict(run.model_state(name))
        except Exception as err:
            raise UserInputError(f"run {run.run_id}: model file {name}.pt is unreadable ({err})", "run") from None
        models[name] = model.eval()
    return models
