"""`python -m cbd_core`: listing, one-line errors with exit status 2, and a real run with --json."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cbd_core.attacks import ATTACKS
from cbd_core.cli import main, parse_assignments
from cbd_core.defenses import DEFENSES
from cbd_core.errors import UserInputError

ROOT = Path(__file__).resolve().parents[1]
ATTACK_NAMES = {"badnets", "blend", "trojan", "sig", "wanet"}
JSON_KEYS = {"dataset", "attack", "poison_rate", "target_label", "defense", "seed", "clean_accuracy",
             "attack_success_rate", "robust_accuracy", "poison_detection_auroc", "seconds", "device", "run_dir"}


@pytest.fixture(autouse=True)
def _runs_root(tmp_path, monkeypatch):
    """Nothing a test does may land in ./runs."""
    monkeypatch.setenv("BACKDOOR_LAB_RUNS", str(tmp_path / "env-runs"))


def test_list_text(capsys):
    assert main(["list"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith("Datasets")
    for name in ATTACK_NAMES | {"cbd", "undefended", "mnist5k", "cifar10"}:
        assert f"  {name} " in out, name
    assert "\nAttacks (defaults shown for 28x28 images)\n" in out and "\nDefenses (" in out
    assert "mi_weight" in out and "cross_ratio" in out


def test_list_json(capsys):
    assert main(["list", "--json"]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert len(out.strip().splitlines()) == 1
    listing = json.loads(out)
    assert {a["name"] for a in listing["attacks"]} == set(ATTACKS) >= ATTACK_NAMES
    assert {d["name"] for d in listing["defenses"]} == set(DEFENSES) >= {"undefended", "cbd"}
    assert "mnist5k" in {d["name"] for d in listing["datasets"]}
    sig = next(a for a in listing["attacks"] if a["name"] == "sig")
    assert sig["clean_label"] is True
    badnets = next(a for a in listing["attacks"] if a["name"] == "badnets")
    size = next(p for p in badnets["parameters (28x28 defaults)"] if p["name"] == "size")
    assert size == {"name": "size", "type": "int", "default": 3, "help": size["help"], "range": [1, 64]}
    cbd = next(d for d in listing["defenses"] if d["name"] == "cbd")
    assert {"epochs", "backdoor_steps", "mi_weight"} <= {p["name"] for p in cbd["parameters (28x28 defaults)"]}


@pytest.fixture
def garbage_npz(tmp_path):
    path = tmp_path / "garbage.npz"
    path.write_bytes(b"this is not a numpy archive\x00\x01\x02" * 20)
    return path


BAD_INPUT = [
    (["--poison-rate", "0.7"], "poison_rate"),
    (["--poison-rate", "-0.1"], "poison_rate"),
    (["--attack", "nope"], "attack"),
    (["--defense", "nope"], "defense"),
    (["--dataset", "nope"], "dataset"),
    (["--target-label", "10"], "target_label"),
    (["--target-label", "-1"], "target_label"),
    (["--epochs", "0"], "epochs"),
    (["--npz", "GARBAGE"], "npz"),
    (["--npz", "MISSING"], "npz"),
    (["--attack-param", "size=99"], "badnets.size"),
    (["--attack-param", "size"], "--attack-param"),
    (["--attack", "blend", "--attack-param", "alpha=-1"], "blend.alpha"),
    (["--defense-param", "nope=1"], "nope"),
    (["--defense", "undefended", "--defense-param", "lr=5"], "undefended.lr"),
    (["--seed", "-3"], "seed"),
    (["--device", "tpu"], "device"),
    (["--model", "vgg"], "model"),
]


@pytest.mark.parametrize("args, field", BAD_INPUT, ids=[" ".join(a) for a, _ in BAD_INPUT])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, garbage_npz, args, field):
    args = [str(garbage_npz) if a == "GARBAGE" else str(tmp_path / "missing.npz") if a == "MISSING" else a
            for a in args]
    assert main(["run", *args, "--out", str(tmp_path / "runs")]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert field in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # nothing was created


@pytest.mark.parametrize("args", [["run", "--poison-rate", "abc"], ["run", "--bogus"], ["frobnicate"], []])
def test_argparse_errors_are_one_line(capsys, args):
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err


def test_parse_assignments():
    assert parse_assignments(["size=4", "pattern=white", "alpha=0.5", "x=null", "flag=true", "s=a=b"], "--p") == {
        "size": 4, "pattern": "white", "alpha": 0.5, "x": None, "flag": True, "s": "a=b"}
    for bad in (["size"], ["=4"]):
        with pytest.raises(UserInputError) as err:
            parse_assignments(bad, "--attack-param")
        assert err.value.field == "--attack-param"


def test_real_run_json(capsys, tmp_path, patch_dataset):
    patch_dataset(300, 100)
    out_dir = tmp_path / "out"
    code = main(["run", "--json", "--epochs", "1", "--defense", "undefended", "--out", str(out_dir),
                 "--attack", "trojan", "--poison-rate", "0.05", "--target-label", "2", "--seed", "5"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "Traceback" not in err
    summary = json.loads(out.strip().splitlines()[-1])
    assert JSON_KEYS <= set(summary)
    assert summary["dataset"] == "mnist5k" and summary["attack"] == "trojan" and summary["defense"] == "undefended"
    assert summary["poison_rate"] == 0.05 and summary["target_label"] == 2 and summary["seed"] == 5
    for key in ("clean_accuracy", "attack_success_rate", "robust_accuracy"):
        assert 0.0 <= summary[key] <= 1.0
    assert summary["poison_detection_auroc"] is None
    assert summary["seconds"] > 0 and isinstance(summary["device"], str)
    run_dir = Path(summary["run_dir"])
    assert run_dir.parent == out_dir.resolve() and run_dir.is_dir()
    # summary.json holds the figures; the CLI adds the verdict, judged when it prints (read time)
    assert {**json.loads((run_dir / "summary.json").read_text()), "verdict": "n/a"} == summary
    assert json.loads((run_dir / "status.json").read_text())["state"] == "done"
    config = json.loads((run_dir / "config.json").read_text())
    assert config["defense_params"]["epochs"] == 1 and config["attack"] == "trojan"
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    # with --json the table goes to stderr and stdout is the one JSON line
    assert len(out.strip().splitlines()) == 1
    assert "clean accuracy (CA)" in err
    assert not (tmp_path / "env-runs").exists()  # --out wins over $BACKDOOR_LAB_RUNS


@pytest.mark.slow
def test_subprocess_bad_poison_rate(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BACKDOOR_LAB_RUNS": str(tmp_path / "runs")}
    proc = subprocess.run([sys.executable, "-m", "cbd_core", "run", "--poison-rate", "0.9"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: poison_rate")
    assert not (tmp_path / "runs").exists()


def _progress_event():
    from cbd_core.progress import ProgressEvent

    return ProgressEvent("train", 1, 2, metrics={"clean_accuracy": 0.91, "attack_success_rate": 0.05})


def test_progress_bar_line():
    import io

    from cbd_core.cli import ProgressBar

    stream = io.StringIO()  # not a tty: one line per finished epoch, no carriage returns
    bar = ProgressBar(stream)
    bar(_progress_event())
    bar.close()
    assert stream.getvalue() == "train epoch 1/2 [############............] CA 0.910 ASR 0.050\n"


def test_progress_bar_follows_sys_stderr(capsys):
    from cbd_core.cli import ProgressBar

    ProgressBar()(_progress_event())
    assert "CA 0.910 ASR 0.050" in capsys.readouterr().err


def _strict_json(text):
    def reject(constant):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=reject)


def test_json_line_is_strict_json_at_poison_rate_zero(capsys, tmp_path, patch_dataset):
    patch_dataset(200, 100)
    code = main(["run", "--json", "--defense", "cbd", "--poison-rate", "0", "--out", str(tmp_path / "out"),
                 "--defense-param", "backdoor_steps=8", "--defense-param", "epochs=1"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = _strict_json(out.strip().splitlines()[-1])
    assert summary["poison_detection_auroc"] is None
