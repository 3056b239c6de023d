"""How sentences about a run write numbers: one reader of summary fields and one percentage format,
shared by the verdicts and by the defenses' own diagnosis sentences. No torch, no Streamlit."""

from __future__ import annotations

import math
from typing import Any


def number(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, NaN, text, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def pct(value: float | None) -> str:
    """A fraction as a percentage with one decimal ("12.5%"); "n/a" for None."""
    return "n/a" if value is None else f"{value:.1%}"


def rate_percent(value: float) -> str:
    """A poison rate as a percentage that rounding never hides: 0.005 -> "0.5%", 0.1 -> "10%"."""
    return f"{100 * value:g}%"


def points(value: float) -> str:
    """A difference of two fractions in percentage points, e.g. "1.2 points"."""
    return f"{abs(value) * 100:.1f} points"


def either(words: list[str], last: str = "or") -> str:
    """"A", "A or B", "A, B or C" (`last`: "and" for "A, B and C"); "" for none."""
    return ", ".join(words[:-1]) + f" {last} " + words[-1] if len(words) > 1 else "".join(words)


# -- thresholds the sentences judge by -------------------------------------------------------------
GOOD_DETECTION_AUROC = 0.9  # a per-sample score "found the poison" when it ranks it this well
LOW_SHARE = 0.5  # a set of flagged samples: precision or recall below this is "most missed"


def flagged_reason(summary: dict[str, Any], name: str, prefix: str, did: str, then: str) -> str | None:
    """Why a defense that sets samples apart (summary fields `<prefix>_count/_precision/_recall`) failed:
    how many samples it set apart, the share of them poisoned (precision) and of the poison caught
    (recall), and what that means; None when the summary holds neither share."""
    precision, recall = number(summary.get(f"{prefix}_precision")), number(summary.get(f"{prefix}_recall"))
    count = number(summary.get(f"{prefix}_count"))
    if count == 0:
        return f"{name} {did} no training samples, so all the poison stayed in the training set."
    if precision is None and recall is None:
        return None
    facts = []
    if precision is not None:
        facts.append(f"{pct(precision)} of them poisoned")
    if recall is not None:
        facts.append(f"catching {pct(recall)} of the poison")
    found = f"{name} {did} {f'{int(count):,} samples' if count is not None else 'samples'} ({', '.join(facts)})"
    if recall is not None and recall < LOW_SHARE:
        return found + ": most poisoned samples stayed in the training set and planted the trigger."
    if precision is not None and precision < LOW_SHARE:
        return found + f": most of what it {did} were clean images, and the poison kept its hold."
    return found + f": it found the poison, but {then} did not undo the backdoor."


# -- the glossary ----------------------------------------------------------------------------------
# Each abbreviation the pages use, defined once; the Lesson, Embeddings and Sample weights pages show
# the ones they use from here (pages.common.glossary), so no page defines a term its own way.
GLOSSARY: dict[str, str] = {
    "CA": "clean accuracy: the share of untouched test images the model classifies right.",
    "ASR": "attack success rate: the share of triggered test images (of every class but the target) that the "
           "model sends to the attacker's target label. High ASR = the backdoor works.",
    "CE": "cross-entropy loss of one image: how badly the model fits its label (0 = fitted perfectly). CBD "
          "compares f_B's loss (CE_B) with f_C's (CE_C): w = CE_B / (CE_B + CE_C).",
    "UMAP": "a method that draws high-dimensional features as a 2-D map, keeping images the model sees alike "
            "close together; distances between far-apart groups mean little.",
    "AUROC": "how well a score ranks the poisoned images above the clean ones: 1.0 = every poisoned image "
             "first, 0.5 = no better than chance.",
}
