"""Verdicts: did the defense remove the backdoor, and what did it cost? Read from a run's summary.

A defended run gets one of four verdicts from its attack success rate (ASR, the share of triggered
non-target test images sent to the target label, a fraction) and its baseline's:

    made worse ASR > baseline ASR + MADE_WORSE_MIN_RISE (0.05)   the defense made the attack stronger
                                                          than it is without a defense (checked first;
                                                          needs the baseline's ASR)
    removed    ASR <= REMOVED_MAX_ASR (0.05)              the trigger no longer works
    weakened   REMOVED_MAX_ASR < ASR < PERSISTS_MIN_ASR   it works on fewer images, but still works
    persists   ASR >= PERSISTS_MIN_ASR (0.50)             the defense failed: most triggered images go
                                                          to the target
    n/a        an undefended run (it is what a defense is measured against), or no ASR recorded

The baseline's ASR is read from the baseline summary the caller passes (looked up when the page, the
report or the table is drawn, so it is the baseline that exists *now*); without one, from the
`baseline_attack_success_rate` the run recorded when it finished, if a baseline existed then.

The **baseline** of a defended run is a finished undefended run on the *same poisoned data and seed*:
every field in BASELINE_KEYS of config.json equal (dataset, npz_path, data_root, attack, attack_params,
poison_rate, target_label, seed, model, threads, deterministic). Against it a run gets its
**clean-accuracy cost** (baseline CA - defended CA; positive = the defense cost accuracy) and the
baseline's own ASR. An undefended ASR below ATTACK_TOOK_HOLD_MIN_ASR (0.50) means the attack did not
take hold even without a defense, so a low ASR is then not the defense's merit; that is said only
where the defended run's ASR is below it too (otherwise the defense planted what the attack alone
could not: "made worse").

`explain` turns a summary into plain sentences saying what happened, as far as the run can tell; why a
failed run failed is the defense's own sentence (`Defense.diagnosis` in its module: CBD says whether
f_B's loss singled out the poison (cbd_core.capture, the one definition) and whether its weights found the poison, i.e. ranked it with an AUROC of at
least GOOD_DETECTION_AUROC (0.9, in `text`); ABL and NONE how much of the poison they set apart), so
nothing here knows a defense by name. Every field may be missing (older runs): a missing one is never an error, the
sentence that needs it is left out.

Nothing here imports Streamlit, nor torch at import time (the defense registry is read when a
sentence needs it): the CLI, the worker and the pages share it.

    verdict(summary, base)                 "made worse" / "removed" / "weakened" / "persists" / "n/a"
    find_baseline(config, root)            a done undefended run on the same data, or None
    find_reusable_baseline(config, root)   the same in any non-failed state (queued, running, done)
    lookup_baseline(config, root)          Baseline(state "done" / "training" / "none", run, summary)
    clean_accuracy_cost(summary, base)     Cost(clean_accuracy_cost, baseline_attack_success_rate)
    explain(summary, base)                 list of sentences
    summary_fields(summary, config, root)  the verdict and baseline_* fields, judged now (read time)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from .run_index import BASELINE, BASELINE_KEYS, SAME_DATA, Found, find, scan  # noqa: F401  (BASELINE_KEYS: re-exported)
from .runs import RunDir, runs_root
from .text import GOOD_DETECTION_AUROC, number as _number, pct as _pct, points as _points  # noqa: F401

# -- thresholds ------------------------------------------------------------------------------------
REMOVED_MAX_ASR = 0.05  # at most 5% of triggered images still reach the target: the backdoor is removed
PERSISTS_MIN_ASR = 0.50  # half or more still do: the backdoor persists (in between: weakened)
ATTACK_TOOK_HOLD_MIN_ASR = 0.50  # an undefended ASR below this: the attack itself did not take hold
MADE_WORSE_MIN_RISE = 0.05  # a defended ASR more than this above its baseline's: the defense made it worse

REMOVED, WEAKENED, PERSISTS, NOT_APPLICABLE = "removed", "weakened", "persists", "n/a"
MADE_WORSE = "made worse"
VERDICTS = (MADE_WORSE, REMOVED, WEAKENED, PERSISTS, NOT_APPLICABLE)
FAILED = (WEAKENED, PERSISTS, MADE_WORSE)
UNDEFENDED = "undefended"

REUSABLE_STATES = ("done", "running", "queued")  # a failed or cancelled baseline is queued again

HEADLINES = {
    REMOVED: "Backdoor removed",
    WEAKENED: "Backdoor weakened, not removed",
    PERSISTS: "Backdoor persists: the defense failed",
    MADE_WORSE: "Attack made stronger: the defense planted more backdoor than the attack alone",
    NOT_APPLICABLE: "No verdict",
}


def legend() -> str:
    """The verdicts in one line, for a table's column help and a page's caption: one definition."""
    return (f"made worse: ASR more than {MADE_WORSE_MIN_RISE * 100:.0f} points above the undefended run's; "
            f"removed: ASR ≤ {REMOVED_MAX_ASR:.0%}; weakened: below {PERSISTS_MIN_ASR:.0%}; persists: the defense "
            "failed; n/a: an undefended run")


# -- small readers that never raise ----------------------------------------------------------------
def _defense(summary: dict[str, Any]) -> str:
    return str(summary.get("defense") or "")


def _registered(summary: dict[str, Any]):
    """The run's defense from the registry (imported here, so that importing verdicts stays free of
    torch), or None for a name this version does not know."""
    from .defenses import defense_or_none

    return defense_or_none(_defense(summary))


def defense_name(summary: dict[str, Any]) -> str:
    """How sentences name the run's defense: its registry entry's `sentence_name`."""
    registered = _registered(summary)
    return registered.sentence_name if registered else (_defense(summary) or "the defense")


# -- the verdict -----------------------------------------------------------------------------------
def baseline_asr(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None = None) -> float | None:
    """The undefended ASR a defended run is judged against: `baseline_summary`'s when given, else the
    one the run recorded when it finished (`baseline_attack_success_rate`), else None."""
    if isinstance(baseline_summary, dict):
        return _number(baseline_summary.get("attack_success_rate"))
    return _number(summary.get("baseline_attack_success_rate")) if isinstance(summary, dict) else None


def verdict(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None = None) -> str:
    """"n/a" for an undefended run (or no ASR); "made worse" when the ASR is more than 5 points above
    the baseline's (`baseline_asr`); else removed (ASR <= 0.05), weakened (< 0.50) or persists, from
    summary["attack_success_rate"] (a fraction)."""
    if not isinstance(summary, dict) or _defense(summary) == UNDEFENDED:
        return NOT_APPLICABLE
    asr = _number(summary.get("attack_success_rate"))
    if asr is None:
        return NOT_APPLICABLE
    base = baseline_asr(summary, baseline_summary)
    if base is not None and asr > base + MADE_WORSE_MIN_RISE:
        return MADE_WORSE
    if asr <= REMOVED_MAX_ASR:
        return REMOVED
    if asr < PERSISTS_MIN_ASR:
        return WEAKENED
    return PERSISTS


def failed(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None = None) -> bool:
    """Whether the defense failed: its verdict is weakened, persists or made worse."""
    return verdict(summary, baseline_summary) in FAILED


# -- the baseline ----------------------------------------------------------------------------------
def same_data(config: dict[str, Any], other: dict[str, Any]) -> bool:
    """Whether two configs train on the same poisoned data, seed, model and arithmetic (`run_index.SAME_DATA`)."""
    return SAME_DATA.same(config, other)


def undefended_runs(root: str | Path | None, pool: list[Found] | None = None) -> list[Found]:
    """(run, config, state, status) of every undefended run in a reusable state (done, running, queued),
    newest first, from one pass over the runs root (or out of `pool`, a `run_index.scan` the caller has
    read); unreadable folders are skipped. Callers that look up many baselines at once read this once
    and pass it to `lookup_baseline`."""
    return [found for found in (scan(root) if pool is None else pool) if found.config.get("defense") == UNDEFENDED
            and found.state in REUSABLE_STATES]


def _candidates(config: dict[str, Any], root: str | Path | None,
                pool: list[Found] | None = None) -> list[tuple[RunDir, str]]:
    """(run, state) of every undefended run on the same data in a reusable state, newest first, out of
    `pool` (default: the whole runs root)."""
    found = find({**config, "defense": UNDEFENDED}, BASELINE, REUSABLE_STATES, root, pool)
    return [(item.run, item.state) for item in found]


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
                    pool: list[Found] | None = None) -> Baseline:
    """The baseline of a run with this config (a config.json dict): the newest finished undefended
    run on the same poisoned data and seed ("done", with its summary), else one still queued or
    running ("training"), else "none". `pool`: `undefended_runs(root)`, when the caller has it."""
    return Baseline("none") if config.get("defense") == UNDEFENDED else _lookup(config, root, pool)


def _lookup(config: dict[str, Any], root: str | Path | None, pool: list[Found] | None = None) -> Baseline:
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
    """The judgement of a finished run as of now, computed when it is read (the CLI's `run --json`;
    summary.json holds the figures only): `verdict`, and when a finished baseline exists under `root`
    at this moment, `baseline_run_id`, `baseline_attack_success_rate` and `clean_accuracy_cost`."""
    if config.get("defense") == UNDEFENDED:
        return {"verdict": verdict(summary)}
    baseline = lookup_baseline(config, root)
    base_summary = baseline.summary if baseline.state == "done" else None
    fields: dict[str, Any] = {"verdict": verdict(summary, base_summary)}
    if base_summary is not None:
        cost = clean_accuracy_cost(summary, base_summary)
        fields.update(baseline_run_id=baseline.run_id, baseline_attack_success_rate=cost.baseline_attack_success_rate,
                      clean_accuracy_cost=cost.clean_accuracy_cost)
    return fields


def baseline_config(config: dict[str, Any]) -> dict[str, Any]:
    """The undefended run on the same data as `config` (a config.json dict): its defense's defaults,
    except that it trains as many epochs as the defense's main model (CBD's f_C), so the clean-accuracy
    cost compares models trained equally long."""
    epochs = (config.get("defense_params") or {}).get("epochs")
    return {**config, "defense": UNDEFENDED, "defense_params": {"epochs": epochs} if isinstance(epochs, int) else {}}


# -- sentences -------------------------------------------------------------------------------------
def diagnosis(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None = None) -> str | None:
    """For a failed run (weakened / persists / made worse): why, as far as its summary can tell (the
    defense's own `Defense.diagnosis`, or `Defense.made_worse_reason` when it made the attack stronger);
    else None."""
    result = verdict(summary, baseline_summary)
    if result not in FAILED:
        return None
    assert summary is not None
    registered = _registered(summary)
    reason = None
    if registered is not None:
        reason = (registered.made_worse_reason(summary) if result == MADE_WORSE else None) or \
            registered.diagnosis(summary)
    return reason or "The run records nothing more about why."


def explain(summary: dict[str, Any] | None, baseline_summary: dict[str, Any] | None = None, *,
            with_cost: bool = True) -> list[str]:
    """Plain sentences a teacher can read: what happened in this run, as far as it can tell (with the
    clean-accuracy cost against `baseline_summary` unless `with_cost` is False). Missing fields (older
    runs) leave a sentence out, never raise."""
    if not isinstance(summary, dict):
        return ["The run has not finished, so there is nothing to judge yet."]
    sentences: list[str] = []
    base = baseline_summary if isinstance(baseline_summary, dict) else None
    result = verdict(summary, base)
    asr = _number(summary.get("attack_success_rate"))
    name = defense_name(summary)
    base_asr = baseline_asr(summary, base)
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

    took_hold_alone = base_asr is None or base_asr >= ATTACK_TOOK_HOLD_MIN_ASR
    if not took_hold_alone and asr is not None and asr < ATTACK_TOOK_HOLD_MIN_ASR:
        sentences.append(f"The attack did not take hold even without a defense (undefended ASR {_pct(base_asr)}), "
                         "so a low attack success rate here is not the defense's merit.")
    if result == MADE_WORSE:
        assert base_asr is not None  # made worse is judged against the baseline's ASR
        sentences.append(
            f"{name} made the attack stronger: {_pct(asr)} of triggered test images reach the target label, against "
            f"{_pct(base_asr)} without a defense (made worse means more than {MADE_WORSE_MIN_RISE * 100:.0f} points "
            "above the undefended run)."
            + (" Without a defense the attack did not take hold; with it, it did." if not took_hold_alone
               and asr >= ATTACK_TOOK_HOLD_MIN_ASR else ""))
        reason = diagnosis(summary, base)
        if reason:
            sentences.append(reason)
    elif result == REMOVED:
        sentences.append(f"{name} removed the backdoor: only {_pct(asr)} of triggered test images reach the target "
                         f"label (removed means at most {REMOVED_MAX_ASR:.0%})"
                         + (f", against {_pct(base_asr)} without a defense." if base_asr is not None else "."))
        registered = _registered(summary)
        found = registered.success_note(summary) if registered else None
        if found:
            sentences.append(found)
    else:
        if result == WEAKENED:
            sentences.append(f"{name} weakened the backdoor but did not remove it: {_pct(asr)} of triggered test "
                             f"images still reach the target label (removed means at most {REMOVED_MAX_ASR:.0%})"
                             + (f", against {_pct(base_asr)} without a defense." if base_asr is not None else "."))
        else:
            sentences.append(f"The backdoor persists despite {name}: {_pct(asr)} of triggered test images still "
                             "reach the target label"
                             + (f", against {_pct(base_asr)} without a defense." if base_asr is not None else "."))
        reason = diagnosis(summary, base)
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


def outcome_note(summary: dict[str, Any] | None, with_reason: bool = True,
                 baseline_summary: dict[str, Any] | None = None) -> str:
    """A sentence or two for a page's "What to look for" text: this run's outcome ("" when there is no
    verdict) and, when the defense failed and `with_reason`, why as far as the run can tell."""
    result = verdict(summary, baseline_summary)
    if result == NOT_APPLICABLE or summary is None:
        return ""
    asr = _pct(_number(summary.get("attack_success_rate")))
    if result == REMOVED:
        return f"In this run the backdoor was removed (attack success rate {asr})."
    reason = (diagnosis(summary, baseline_summary) or "") if with_reason else ""
    if result == MADE_WORSE:
        return (f"In this run the defense made the attack stronger (attack success rate {asr}, against "
                f"{_pct(baseline_asr(summary, baseline_summary))} without a defense). {reason}").strip()
    what = "was only weakened" if result == WEAKENED else "persists"
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
    baseline = baseline or Baseline("none")
    base_summary = baseline.summary if baseline.state == "done" else None
    result = verdict(summary, base_summary)
    asr = _number(summary.get("attack_success_rate"))
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
