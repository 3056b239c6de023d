"""Two questions about CBD's f_B, each answered here and nowhere else; every Lesson step, page and
report sentence about f_B reads them from `read_f_b`.

    caught the trigger       f_B's attack success rate on the triggered TEST images reached CAUGHT_ASR
                             (half of them sent to the target) at some checkpoint of its short training
                             (metrics.jsonl, phase f_B). What a student sees on the training curve.
    singled out the poison   when f_C started, f_B's LOSS on the poisoned TRAINING images was lower than on
                             the clean ones: ranking the training images by low loss finds the poison with an
                             AUROC of at least SINGLED_OUT_AUROC (summary.json, f_b_capture). This is what
                             CBD needs: its weights are built from that loss and from nothing else.

The two can differ. On WaNet f_B learns to recognise the warp (its test ASR can jump, and its map
gathers the warped images in an island), yet it fits the warped training images no more easily than
the clean ones, so its loss cannot tell CBD which images to weigh down. `why_they_differ` says so.

    read_f_b(summary, metrics)   FBReading: both answers with the figures behind them, read at the moment
                                 they describe (the step f_B caught the trigger, its clean accuracy then)
    loss_singled_out(auroc)      the one threshold test (the defense records `captured` with it)
    f_b_sentences(reading)       the plain sentences for a page: caught?, singled out?, why they differ

Nothing here imports torch or Streamlit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

CAUGHT_ASR = 0.5  # f_B "caught the trigger" once it sends half the triggered test images to the target
SINGLED_OUT_AUROC = 0.9  # f_B's loss "singled out the poison" when low loss ranks poisoned images this well


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0%}" if value >= 0.1 or value == 0 else f"{value:.1%}"


def loss_singled_out(auroc: float | None) -> bool | None:
    """Whether f_B's loss singles out the poison, from the AUROC of (-loss) against the poison mask
    (None when it was not recorded)."""
    auroc = _number(auroc)
    return None if auroc is None else auroc >= SINGLED_OUT_AUROC


@dataclass(frozen=True)
class FBReading:
    caught: bool | None  # None: the run recorded nothing about f_B's test ASR
    caught_step: int | None  # f_B's training step (or epoch) of the first checkpoint at CAUGHT_ASR
    caught_asr: float | None  # its test ASR at that checkpoint
    clean_accuracy_then: float | None  # its clean accuracy at that same checkpoint
    peak_asr: float | None
    final_asr: float | None  # when f_C started
    singled_out: bool | None  # None: the run did not record f_B's loss (not a CBD run, or an older one)
    loss_auroc: float | None
    loss_poisoned: float | None  # median loss of f_B on poisoned / clean training images when f_C started
    loss_clean: float | None


def read_f_b(summary: dict[str, Any] | None, metrics: Sequence[dict[str, Any]] | None = None) -> FBReading:
    """Both answers for one run. With `metrics` (metrics.jsonl), "caught" is read checkpoint by
    checkpoint; without, only f_B's last test ASR (summary) can show it, and a low one says "unknown"."""
    summary = summary if isinstance(summary, dict) else {}
    record = summary.get("f_b_capture") if isinstance(summary.get("f_b_capture"), dict) else {}
    lines = [line for line in (metrics or []) if line.get("phase") == "f_B"]
    asr = [_number(line.get("attack_success_rate")) for line in lines]
    known = [a for a in asr if a is not None]
    caught_at = next((i for i, a in enumerate(asr) if a is not None and a >= CAUGHT_ASR), None)
    final = _number(record.get("test_attack_success_rate"))
    if known:
        caught: bool | None = caught_at is not None
        final = known[-1] if final is None else final
    else:
        caught = True if final is not None and final >= CAUGHT_ASR else None
    step = None
    if caught_at is not None:
        when = lines[caught_at].get("step", lines[caught_at].get("epoch"))
        step = int(when) if isinstance(when, (int, float)) and not isinstance(when, bool) else None
    auroc = _number(record.get("detection_auroc"))
    singled = loss_singled_out(auroc)
    if singled is None and isinstance(record.get("captured"), bool):  # an AUROC-less record keeps its own flag
        singled = record["captured"]
    return FBReading(
        caught=caught, caught_step=step,
        caught_asr=asr[caught_at] if caught_at is not None else None,
        clean_accuracy_then=_number(lines[caught_at].get("clean_accuracy")) if caught_at is not None else None,
        peak_asr=max(known) if known else final, final_asr=final,
        singled_out=singled, loss_auroc=auroc,
        loss_poisoned=_number(record.get("loss_poisoned_median")), loss_clean=_number(record.get("loss_clean_median")))


def caught_sentence(reading: FBReading) -> str:
    """Did f_B catch the trigger, with the figures of the moment it did ("" when unknown)."""
    if reading.caught is None:
        return ""
    if not reading.caught:
        return (f"f_B never caught the trigger: its attack success rate on triggered test images stayed below "
                f"{CAUGHT_ASR:.0%} (peak {_pct(reading.peak_asr)}).")
    if reading.caught_step is None:  # known only from its last ASR (no metrics)
        return f"f_B caught the trigger: it sent {_pct(reading.final_asr)} of triggered test images to the target."
    sentence = (f"f_B caught the trigger at step {reading.caught_step}: {_pct(reading.caught_asr)} of triggered "
                "test images went to the target")
    if reading.clean_accuracy_then is not None:
        sentence += (f", while its clean accuracy was still {_pct(reading.clean_accuracy_then)} at that step "
                     "(it was still learning the task)")
    if reading.final_asr is not None and reading.final_asr < CAUGHT_ASR:
        sentence += f"; by the time f_C started its attack success rate had swung back to {_pct(reading.final_asr)}"
    return sentence + "."


def _losses(reading: FBReading) -> str:
    if reading.loss_poisoned is None or reading.loss_clean is None:
        return ""
    return f" (median loss {reading.loss_poisoned:.3g} on poisoned images, {reading.loss_clean:.3g} on clean ones)"


def singled_out_sentence(reading: FBReading) -> str:
    """Did f_B's loss single out the poison when f_C started ("" when the run did not record it)."""
    if reading.singled_out is None:
        return ""
    auroc = f"; AUROC {reading.loss_auroc:.3f}, 1 is perfect, 0.5 is chance" if reading.loss_auroc is not None else ""
    if reading.singled_out:
        return (f"When f_C started, f_B's loss singled out the poison: it fitted the poisoned training images "
                f"more easily than the clean ones{_losses(reading)}{auroc}. That is what CBD needs, since its "
                "weights are built from that loss.")
    return (f"When f_C started, f_B's loss did not single out the poison: it fitted the poisoned training images "
            f"no more easily than the clean ones{_losses(reading)}{auroc}. CBD builds its weights from that loss "
            "alone, so they could not point at the poison.")


def why_they_differ(reading: FBReading) -> str:
    """When the two answers differ, why, in plain words ("" when they agree or one is unknown)."""
    if reading.caught and reading.singled_out is False:
        return ("Why both can be true: recognising the trigger on new test images, or setting the poisoned images "
                "apart in its map, is not the same as fitting them more easily. f_B learned what the trigger looks "
                "like, but it did not learn the poisoned training images any faster than the clean ones, and CBD only "
                "sees how easily f_B fits each image.")
    if reading.caught is False and reading.singled_out:
        return ("Why both can be true: f_B fitted the poisoned training images early (that is all CBD reads) "
                "without yet sending most new triggered test images to the target.")
    return ""


def f_b_sentences(reading: FBReading) -> list[str]:
    """What a page says about f_B: caught?, singled out?, and why they differ; empty ones left out."""
    return [s for s in (caught_sentence(reading), singled_out_sentence(reading), why_they_differ(reading)) if s]
