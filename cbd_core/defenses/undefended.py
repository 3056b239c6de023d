"""No defense: standard training on the poisoned set, the baseline every defense is measured against."""

from __future__ import annotations

from ..params import Param
from ..training import cosine_lr, sgd
from .base import Defense, DefenseContext, DefenseResult, train_epoch


class Undefended(Defense):
    name = "undefended"
    title = "Undefended"
    menu_order = 0
    description = "standard training on the poisoned data (the baseline)"
    sentence_name = "the undefended model"
    key_params = ("epochs", "lr")
    params = (
        Param("epochs", int, "training epochs", 1, 500),
        Param("lr", float, "peak learning rate (cosine schedule)", 1e-5, 1.0),
        Param("batch_size", int, "batch size", 8, 4096),
        Param("weight_decay", float, "weight decay", 0.0, 0.1),
    )

    def defaults(self, image_shape):
        small = image_shape[0] <= 28
        return {"epochs": 10 if small else 40, "lr": 0.05, "batch_size": 128, "weight_decay": 5e-4}

    def train(self, ctx: DefenseContext) -> DefenseResult:
        p = ctx.params
        model = ctx.build_model()
        optimizer = sgd(model, p["lr"], p["weight_decay"])
        steps_per_epoch = -(-len(ctx.train) // p["batch_size"])
        total = p["epochs"] * steps_per_epoch
        generator = ctx.generator()
        for epoch in range(1, p["epochs"] + 1):
            loss = train_epoch(ctx, model, optimizer, generator,
                               lambda s: cosine_lr(s, total, p["lr"], warmup_steps=steps_per_epoch // 2),
                               (epoch - 1) * steps_per_epoch, "train", epoch, p["epochs"])
            ctx.end_epoch("train", epoch, p["epochs"], model, train_loss=round(loss, 5))
        return DefenseResult(model=model)
