"""Verdicts: did the defense remove the backdoor, and what did it cost? Read from a run's summary.

A defended run gets one of three verdicts from its attack success rate (ASR, the share of triggered
non-target test images sent to the target label, a fraction):

    removed    ASR <= REMOVED_MAX_ASR (0.05)              the trigger no longer works
    weakened   REMOVED_MAX_ASR < ASR < PERSISTS_MIN_ASR   it works on fewer images, but still works
    persists   ASR >= PERSISTS_MIN_ASR (0.50)             the defense failed: most triggered images go
                                                          to the target
    n/a        an undefended run (it is what a defense is measured against), or no ASR recorded

The **baseline** of a defended run is a finished undefended run on the *same poisoned data and seed*:
every field in BASELINE_KEYS of config.json equal (dataset, npz_path, data_root, attack, attack_params,
poison_rate, target_label, seed, model, threads, deterministic). Against it a run gets its
**clean-accuracy cost** (baseline CA - defended CA; positive = the defense cost accuracy) and the
baseline's own ASR. An undefended ASR below ATTACK_TOOK_HOLD_MIN_ASR (0.50) means the attack did not
take hold even without a defense, so a low ASR is then not the defense's merit.

`explain` turns a summary into plain sentences saying what happened, as far as the run can tell:
for a failed CBD run whether f_B's loss singled out the poison (cbd_core.capture) and whether
the weights singled out the poison (poison-detection AUROC >= GOOD_DETECTION_AUROC, 0.9); for ABL its
isolated set's precision and recall; for NONE its filtered set's. Every field may be missing (older
runs): a missing one is never an error, the sentence that needs it is left out.

Nothing here imports Streamlit or torch: the CLI, the worker and the pages share it.

    verdict(summary)                       "removed" / "weakened" / "persists" / "n/a"
    find_baseline(config, root)            a done undefended run on the same data, or None
    find_reusable_baseline(config, root)   the same in any non-failed state (queued, running, done)
    lookup_baseline(config, root)          Baseline(state "done" / "training" / "none", run, summary)
    clean_accuracy_cost(summary, base)     Cost(clean_accuracy_cost, baseline_attack_success_rate)
    explain(summary, base)                 list of sentences
    summary_fields(summary, config, root)  what pipeline adds to summary.json (verdict, baseline_*)
    ensure_baseline(run, root)             queue the undefended baseline of a run, or reuse one
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from . import capture
from .errors import UserInputError
from .runs import RunDir, list_runs, runs_root

# -- thresholds ------------------------------------------------------------------------------------
REMOVED_MAX_ASR = 0.05  # at most 5% of triggered images still reach the target: the backdoor is removed
PERSISTS_MIN_ASR = 0.50  # half or more still do: the backdoor persists (in between: weakened)
ATTACK_TOOK_HOLD_MIN_ASR = 0.50  # an undefended ASR below this: the attack itself did not take hold
GOOD_DETECTION_AUROC = 0.9  # CBD's weights "found the poison" when (1 - weight) ranks it this well
LOW_SHARE = 0.5  # ABL's / NONE's flagged set: precision or recall below this is "most missed"

REMOVED, WEAKENED, PERSISTS, NOT_APPLICABLE = "removed", "weakened", "persists", "n/a"
VERDICTS = (REMOVED, WEAKENED, PERSISTS, NOT_APPLICABLE)
FAILED = (WEAKENED, PERSISTS)
UNDEFENDED = "undefended"

# The config.json fields that make two runs train on the same poisoned data with the same arithmetic.
BASELINE_KEYS = ("dataset", "npz_path", "data_root", "attack", "attack_params", "poison_rate", "target_label",
                 "seed", "model", "threads", "deterministic")
REUSABLE_STATES = ("done", "running", "queued")  # a failed or cancelled baseline is queued again

DEFENSE_NAMES = {"cbd": "CBD", "abl": "ABL", "nonlinearity": "NONE", UNDEFENDED: "the undefended model"}
HEADLINES = {
    REMOVED: "Backdoor removed",
    WEAKENED: "Backdoor weakened, not removed",
    PERSISTS: "Backdoor persists: the defense failed",
    NOT_APPLICABLE: "No verdict",
}


# -- small readers that never raise ----------------------------------------------------------------
def _number(value: Any) -> float | None:
    """`value` as a finite float, or None (missing, NaN, text, a bool)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1%}"


def _points(value: float) -> str:
    """A difference of two fractions in percentage points, e.g. "1.2 points"."""
    return f"{abs(value) * 100:.1f} points"


def _defense(summary: dict[str, Any]) -> str:
    return str(summary.get("defense") or "")


def defense_name(summary: dict[str, Any]) -> str:
    name = _defense(summary)
    return DEFENSE_NAMES.get(name, name or "the defense")


# -- the verdict -----------------------------------------------------------------------------------
def verdict(summary: dict[str, Any] | None) -> str:
    """"n/a" for an undefended run (or no ASR); else removed (ASR <= 0.05), weakened (< 0.50) or
    persists, from summary["attack_success_rate"] (a fraction)."""
    if not isinstance(summary, dict) or _defense(summary) == UNDEFENDED:
        return NOT_APPLICABLE
    asr = _number(summary.get("attack_success_rate"))
    if asr is None:
        return NOT_APPLICABLE
    if asr <= REMOVED_MAX_ASR:
        return REMOVED
    if asr < PERSISTS_MIN_ASR:
        return WEAKENED
    return PERSISTS


def failed(summary: dict[str, Any] | None) -> bool:
    """Whether the defense failed: its verdict is weakened or persists."""
    return verdict(summary) in FAILED


# -- the baseline ----------------------------------------------------------------------------------
def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        x, y = _number(a), _number(b)
        return x is not None and y is not None and abs(x - y) <= 1e-9
    return a == b


def same_data(config: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two configs train on the same poisoned data, seed, model and arithmetic."""
    return all(_same(config.get(key), other.get(key)) for key in BASELINE_KEYS)


def undefended_runs(root: str | Path | None) -> list[tuple[RunDir, dict[str, Any], str]]:
    """(run, config, state) of every undefended run in a reusable state (done, running, queued), newest
    first, from one pass over the runs root; unreadable folders are skipped. Callers that look up many
    baselines at once read this once and pass it to `lookup_baseline`."""
    found = []
    for run in list_runs(root):
        try:
            config = run.config()
        except (OSError, ValueError, UserInputError):
            continue
        if config.get("defense") != UNDEFENDED:
            continue
        state = run.status().get("state")
        if state in REUSABLE_STATES:
            found.append((run, config, state))
    return found


def _candidates(config: dict[str, Any], root: str | Path | None,
                pool: list[tuple[RunDir, dict[str, Any], str]] | None = None) -> list[tuple[RunDir, str]]:
    """(run, state) of every undefended run on the same data in a reusable state, newest first, out of
    `pool` (default: `undefended_runs(root)`)."""
    pool = undefended_runs(root) if pool is None else pool
    return [(run, state) for run, other, state in pool if same_data(config, other)]


def _figures(run: RunDir) -> dict[str, Any] | None:
    """The run's summary when it holds its figures (a hand-edited summary without them is no
    baseline), else None."""
    summary = run.summary()
    if summary is not None and all(_number(summary.get(k)) is not None
                                   for k in ("clean_accuracy", "attack_success_rate")):
        return summary
    return None


@dataclass
class Baseline:
    """What a defended run can be measured against right now."""

    state: str  # "done" (summary holds it), "training" (queued or running), "none"
    run_id: str | None = None
    summary: dict[str, Any] | None = None


def lookup_baseline(config: dict[str, Any], root: str | Path | None = None,
                    pool: list[tuple[RunDir, dict[str, Any], str]] | None = None) -> Baseline:
    """The baseline of a run with this config (a config.json dict): the newest finished undefended
    run on the same poisoned data and seed ("done", with its summary), else one still queued or
    running ("training"), else "none". `pool`: `undefended_runs(root)`, when the caller has it."""
    return Baseline("none") if config.get("defense") == UNDEFENDED else _lookup(config, root, pool)


def _lookup(config: dict[str, Any], root: str | Path | None,
            pool: list[tuple[RunDir, dict[str, Any], str]] | None = None) -> Baseline:
    candidates = _candidates(config, root, pool)
    for run, state in candidates:
        if state == "done" and (summary := _figures(run)) is not None:
            return Baseline("done", run.run_id, summary)
    for run, state in candidates:
        if state != "done":
            return Baseline("training", run.run_id)
    return Baseline("none")


def find_baseline(config: dict[str, Any], root: str | Path | None = None) -> RunDir | None:
    """The newest finished undefended run trained on the same poisoned data and seed as `config`,
    under the runs root; None when there is none."""
    found = _lookup(config, root)
    return RunDir(runs_root(root) / found.run_id) if found.state == "done" else None


def find_reusable_baseline(config: dict[str, Any], root: str | Path | None = None) -> RunDir | None:
    """Such an undefended run in any non-failed state, a done one first, then running, then queued:
    the one to reuse instead of queueing another."""
    found = _candidates(config, root)
    for state in REUSABLE_STATES:
        for run, its_state in found:
            if its_state == state:
                return run
    return None


class Cost(NamedTuple):
    clean_accuracy_cost: float | None  # baseline CA - defended CA (fraction); positive = accuracy lost
    baseline_attack_success_rate: float | None


def clean_accuracy_cost(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None) -> Cost:
    """Baseline clean accuracy minus the defended run's (a fraction: positive = the defense cost
    accuracy), and the baseline's ASR; None for what the summaries do not hold."""
    summary, baseline_summary = summary or {}, baseline_summary or {}
    ca, base_ca = _number(summary.get("clean_accuracy")), _number(baseline_summary.get("clean_accuracy"))
    cost = round(base_ca - ca, 6) if ca is not None and base_ca is not None else None
    return Cost(cost, _number(baseline_summary.get("attack_success_rate")))


def summary_fields(summary: dict[str, Any], config: dict[str, Any], root: str | Path | None) -> dict[str, Any]:
    """What summary.json carries besides the figures: `verdict`, and when a finished baseline exists
    under `root` at this moment, `baseline_run_id`, `baseline_attack_success_rate` and
    `clean_accuracy_cost`."""
    fields: dict[str, Any] = {"verdict": verdict(summary)}
    if config.get("defense") == UNDEFENDED:
        return fields
    baseline = lookup_baseline(config, root)
    if baseline.state == "done":
        cost = clean_accuracy_cost(summary, baseline.summary)
        fields.update(baseline_run_id=baseline.run_id, baseline_attack_success_rate=cost.baseline_attack_success_rate,
                      clean_accuracy_cost=cost.clean_accuracy_cost)
    return fields


def baseline_config(config: dict[str, Any]) -> dict[str, Any]:
    """The undefended run on the same data as `config` (a config.json dict): its defense's defaults,
    except that it trains as many epochs as the defense's main model (CBD's f_C), so the clean-accuracy
    cost compares models trained equally long."""
    epochs = (config.get("defense_params") or {}).get("epochs")
    return {**config, "defense": UNDEFENDED, "defense_params": {"epochs": epochs} if isinstance(epochs, int) else {}}


def ensure_baseline(run: RunDir, root: str | Path | None = None, start_worker: bool = True
                    ) -> tuple[RunDir | None, bool]:
    """Queue the undefended baseline of `run` through `jobs.submit` (after it, so the worker takes it
    next), unless a matching one exists in any non-failed state. Returns (baseline, reused); (None,
    False) for an undefended run, which needs none."""
    from .config import RunConfig
    from .jobs import submit

    config = run.config()
    if config.get("defense") == UNDEFENDED:
        return None, False
    root = runs_root(root if root is not None else run.path.parent)
    existing = find_reusable_baseline(config, root)
    if existing is not None:
        return existing, True
    return submit(RunConfig.from_dict(baseline_config(config)), root, start_worker=start_worker), False


# -- sentences -------------------------------------------------------------------------------------
def _cbd_reason(summary: dict[str, Any]) -> str:
    auroc = _number(summary.get("poison_detection_auroc"))
    f_b = capture.read_f_b(summary)  # the one definition of "f_B's loss singled out the poison"
    if f_b.singled_out is False:
        return " ".join(s for s in (capture.singled_out_sentence(f_b), capture.why_they_differ(f_b),
                                    "f_C learned from the poisoned images as from any others.") if s)
    if auroc is not None and auroc >= GOOD_DETECTION_AUROC:
        return (f"The weights did find the poison (detection AUROC {auroc:.3f}), but f_C learned the trigger "
                "anyway.")
    if auroc is not None:
        return (f"The weights did not separate poisoned from clean samples (detection AUROC {auroc:.3f}; 0.5 is "
                "chance), so f_C trained on the poison with nearly full weight.")
    return "The run does not record how well CBD's weights picked out the poison, so it cannot tell why."


def _flagged_reason(summary: dict[str, Any], prefix: str, did: str, then: str) -> str | None:
    """ABL (isolated_* / unlearned_*) and NONE (filtered_*): how many samples it set aside, the share of
    them poisoned (precision) and of the poison caught (recall), and what that means."""
    precision, recall = _number(summary.get(f"{prefix}_precision")), _number(summary.get(f"{prefix}_recall"))
    count = _number(summary.get(f"{prefix}_count"))
    name = defense_name(summary)
    if count == 0:
        return f"{name} {did} no training samples, so all the poison stayed in the training set."
    if precision is None and recall is None:
        return None
    facts = []
    if precision is not None:
        facts.append(f"{_pct(precision)} of them poisoned")
    if recall is not None:
        facts.append(f"catching {_pct(recall)} of the poison")
    found = f"{name} {did} {f'{int(count):,} samples' if count is not None else 'samples'} ({', '.join(facts)})"
    if recall is not None and recall < LOW_SHARE:
        return found + ": most poisoned samples stayed in the training set and planted the trigger."
    if precision is not None and precision < LOW_SHARE:
        return found + f": most of what it {did} were clean images, and the poison kept its hold."
    return found + f": it found the poison, but {then} did not undo the backdoor."


def diagnosis(summary: dict[str, Any] | None) -> str | None:
    """For a failed run (weakened / persists): why, as far as its summary can tell; else None."""
    if not failed(summary):
        return None
    assert summary is not None
    defense = _defense(summary)
    if defense == "cbd" or "f_b_capture" in summary:
        return _cbd_reason(summary)
    if defense == "abl" or "isolated_precision" in summary:
        late = _flagged_reason(summary, "unlearned", "unlearned", "unlearning it") \
            if _number(summary.get("unlearned_recall")) is not None else None
        return late or _flagged_reason(summary, "isolated", "isolated", "unlearning it") or \
            "The run does not record what ABL isolated, so it cannot tell why."
    if defense == "nonlinearity" or "filtered_precision" in summary:
        resets = summary.get("reset_channels")
        if isinstance(resets, list) and resets and not any(resets):
            return ("NONE found no hyperplane neurons to reset (none fired far above normal), so it filtered "
                    "nothing that mattered and the trigger stayed learned.")
        return _flagged_reason(summary, "filtered", "filtered out",
                                                           "resetting neurons and fine-tuning without it") or \
            "The run does not record what NONE filtered out, so it cannot tell why."
    return "The run records nothing more about why."


def explain(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None = None, *,
            with_cost: bool = True) -> list[str]:
    """Plain sentences a teacher can read: what happened in this run, as far as it can tell (with the
    clean-accuracy cost against `baseline_summary` unless `with_cost` is False). Missing fields (older
    runs) leave a sentence out, never raise."""
    if not isinstance(summary, dict):
        return ["The run has not finished, so there is nothing to judge yet."]
    sentences: list[str] = []
    result = verdict(summary)
    asr = _number(summary.get("attack_success_rate"))
    name = defense_name(summary)
    base = baseline_summary if isinstance(baseline_summary, dict) else None
    base_asr = _number(base.get("attack_success_rate")) if base else None
    cost = clean_accuracy_cost(summary, base).clean_accuracy_cost if base else None

    if _defense(summary) == UNDEFENDED:
        if asr is not None:
            sentences.append(f"No defense: this run shows what the attack does on its own, sending {_pct(asr)} of "
                             "triggered test images to the target label.")
            if asr < ATTACK_TOOK_HOLD_MIN_ASR:
                sentences.append("The attack did not take hold here, so a defended run on the same data has "
                                 "little to remove.")
        return sentences
    if result == NOT_APPLICABLE:
        return ["The run records no attack success rate, so there is no verdict."]

    if base_asr is not None and base_asr < ATTACK_TOOK_HOLD_MIN_ASR:
        sentences.append(f"The attack did not take hold even without a defense (undefended ASR {_pct(base_asr)}), "
                         "so a low attack success rate here is not the defense's merit.")
    if result == REMOVED:
        sentences.append(f"{name} removed the backdoor: only {_pct(asr)} of triggered test images reach the target "
                         f"label (removed means at most {REMOVED_MAX_ASR:.0%})"
                         + (f", against {_pct(base_asr)} without a defense." if base_asr is not None else "."))
        auroc = _number(summary.get("poison_detection_auroc"))
        if _defense(summary) == "cbd" and auroc is not None:
            sentences.append(f"Its weights picked out the poisoned samples (detection AUROC {auroc:.3f}).")
    else:
        if result == WEAKENED:
            sentences.append(f"{name} weakened the backdoor but did not remove it: {_pct(asr)} of triggered test "
                             f"images still reach the target label (removed means at most {REMOVED_MAX_ASR:.0%})"
                             + (f", against {_pct(base_asr)} without a defense." if base_asr is not None else "."))
        else:
            sentences.append(f"The backdoor persists despite {name}: {_pct(asr)} of triggered test images still "
                             "reach the target label"
                             + (f", against {_pct(base_asr)} without a defense." if base_asr is not None else "."))
        reason = diagnosis(summary)
        if reason:
            sentences.append(reason)
    if cost is not None and with_cost:
        if cost > 0.0005:
            sentences.append(f"It cost {_points(cost)} of clean accuracy against the undefended run "
                             f"({_pct(_number(base.get('clean_accuracy')))} → "
                             f"{_pct(_number(summary.get('clean_accuracy')))}).")
        else:
            sentences.append(f"It kept the undefended run's clean accuracy "
                             f"({_pct(_number(base.get('clean_accuracy')))} → "
                             f"{_pct(_number(summary.get('clean_accuracy')))}).")
    return sentences


def outcome_note(summary: dict[str, Any] | None, with_reason: bool = True) -> str:
    """A sentence or two for a page's "What to look for" text: this run's outcome ("" when there is no
    verdict) and, when the defense failed and `with_reason`, why as far as the run can tell."""
    result = verdict(summary)
    if result == NOT_APPLICABLE or summary is None:
        return ""
    asr = _pct(_number(summary.get("attack_success_rate")))
    if result == REMOVED:
        return f"In this run the backdoor was removed (attack success rate {asr})."
    what = "was only weakened" if result == WEAKENED else "persists"
    reason = (diagnosis(summary) or "") if with_reason else ""
    return f"In this run the defense failed: the backdoor {what} (attack success rate {asr}). {reason}".strip()


def banner_text(summary: dict[str, Any] | None, baseline: Baseline | None, state: str = "done") -> tuple[str, str]:
    """(verdict, markdown) for a page's banner: the headline, the ASR, the clean-accuracy cost against
    the baseline ("baseline still training" / "no baseline" otherwise) and the `explain` sentences.
    The verdict is "n/a" for a run that has not finished."""
    if state != "done" or not isinstance(summary, dict):
        if state in ("failed", "cancelled"):  # it never will be done: "yet" would promise a verdict
            return NOT_APPLICABLE, (f"**No verdict**: the run was {state} before it finished, so it has none; "
                                    "train it again to get one.")
        return NOT_APPLICABLE, f"**No verdict yet**: the run is {state}; it gets one when it is done."
    result = verdict(summary)
    asr = _number(summary.get("attack_success_rate"))
    baseline = baseline or Baseline("none")
    base_summary = baseline.summary if baseline.state == "done" else None
    if _defense(summary) == UNDEFENDED:
        head = ("**No verdict: this run is undefended.** It is the baseline that defenses on the same data are "
                f"measured against (clean accuracy {_pct(_number(summary.get('clean_accuracy')))}).")
        return result, head + "  \n" + " ".join(explain(summary))
    parts = [f"**{HEADLINES[result]}.** Attack success rate {_pct(asr)}"
             f" (removed ≤ {REMOVED_MAX_ASR:.0%}, persists ≥ {PERSISTS_MIN_ASR:.0%})."]
    if base_summary is not None:
        cost = clean_accuracy_cost(summary, base_summary).clean_accuracy_cost
        against = (f"{_pct(_number(summary.get('clean_accuracy')))} against the undefended baseline's "
                   f"{_pct(_number(base_summary.get('clean_accuracy')))}, run `{baseline.run_id}`")
        if cost is None:
            parts.append(f"Clean-accuracy cost: unknown (run `{baseline.run_id}` records no clean accuracy).")
        elif cost > 0.0005:
            parts.append(f"Clean-accuracy cost: {_points(cost)} ({against}).")
        elif cost >= -0.0005:
            parts.append(f"Clean-accuracy cost: none ({against}).")
        else:
            parts.append(f"Clean-accuracy cost: none, {_points(cost)} gained ({against}).")
    elif baseline.state == "training":
        parts.append(f"Clean-accuracy cost: baseline still training (run `{baseline.run_id}`).")
    else:
        parts.append("Clean-accuracy cost: no baseline (no finished undefended run on the same data and seed).")
    return result, " ".join(parts) + "  \n" + " ".join(explain(summary, base_summary, with_cost=False))
