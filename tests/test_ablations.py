"""benchmarks/ablations.py: the run list and the table (the runs themselves are benchmarks)."""

import pytest

from benchmarks import ablations
from configs.sweeps import ablation_cpu


def test_runs_cover_every_ablation_with_two_seeds_where_asked():
    runs = ablation_cpu.named_runs()
    names = [name for name, _ in ablation_cpu.ABLATIONS]
    assert [n for n in dict.fromkeys(n for n, _ in runs)] == names
    for name in names:
        seeds = sorted(o["seed"] for n, o in runs if n == name)
        assert seeds == ([0, 1] if name in ablation_cpu.TWO_SEEDS else [0])
    # The comparisons of the paper: input scale, LAP, encodings, weighting, prediction, tanh.
    assert {"scale_b1.0", "lap_none", "lap_random", "lap_different"} <= set(names)
    assert {"enc_onehot", "enc_rgb", "weight_uniform", "pred_eps", "act_none"} <= set(names)


def _entry(name, seed, ari, **extra):
    return {
        "name": name,
        "seed": seed,
        "ari_vs_all": ari,
        "hiou_e_vs_all": ari / 2,
        "max_ari": ari + 0.1,
        "ged_ari": 1 - ari,
        **extra,
    }


def test_table_reports_mean_spread_and_failures():
    entries = [
        _entry("paper", 0, 0.30),
        _entry("paper", 1, 0.20),
        _entry("pred_eps", 0, 0.10),
        {"name": "scale_b1.0", "seed": 0, "failed": "exit 1: loss is NaN"},
        _entry("scale_b1.0", 1, 0.05),
    ]
    rows = {line.split("|")[1].strip(): line for line in ablations.table(entries).splitlines()}
    assert "0.250 +- 0.050" in rows["paper"]  # mean and half the seed difference
    assert "| 0,1 |" in rows["paper"]
    assert "0.100" in rows["pred_eps"] and "+-" not in rows["pred_eps"]
    assert "seed 0 failed (exit 1: loss is NaN)" in rows["scale_b1.0"]
    assert "0.050" in rows["scale_b1.0"]
    assert "n/a" in rows["enc_rgb"]  # not run: shown, not dropped


def test_unknown_run_name_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr("sys.argv", ["ablations.py", f"--workdir={tmp_path}", "--only=nope"])
    with pytest.raises(SystemExit, match="unknown runs"):
        ablations.main()


def test_run_one_skips_a_run_locked_by_another_driver_and_reads_finished_ones(tmp_path):
    import fcntl
    import json

    overrides = {"seed": 0}
    workdir = tmp_path / "paper_s0"
    workdir.mkdir()
    with (workdir / ".lock").open("w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        entry = ablations.run_one("paper", overrides, tmp_path, cpu=None)
    assert entry["skipped"] == "running in another driver"
    result = workdir / "eval" / f"{ablations.SETUP}.json"
    result.parent.mkdir()
    result.write_text(json.dumps({"ari_vs_all": 0.25, "seed": 123}))  # the eval's own seed
    entry = ablations.run_one("paper", overrides, tmp_path, cpu=None)
    assert entry["ari_vs_all"] == 0.25 and "skipped" not in entry
    assert entry["seed"] == 0  # the run's seed wins


def test_compare_column_reads_finished_runs_of_another_budget(tmp_path):
    import json

    for seed, ari in ((0, 0.1), (1, 0.2)):
        workdir = tmp_path / f"paper_s{seed}"
        (workdir / "eval").mkdir(parents=True)
        (workdir / "eval" / f"{ablations.SETUP}.json").write_text(json.dumps({"ari_vs_all": ari}))
        (workdir / "config.json").write_text(json.dumps({"total_steps": 1000}))
    (tmp_path / "lap_none_s0").mkdir()  # started, not finished: not read
    compare, steps = ablations.finished(tmp_path)
    assert steps == 1000 and [e["name"] for e in compare] == ["paper", "paper"]
    lines = ablations.table([_entry("paper", 0, 0.3)], compare, steps).splitlines()
    assert lines[0].endswith("| ARI at 1,000 steps |")
    rows = {line.split("|")[1].strip(): line for line in lines}
    assert rows["paper"].endswith("| 0.150 +- 0.050 |")
    assert rows["lap_none"].endswith("| n/a |")


def test_main_tabulates_finished_runs_with_compare(monkeypatch, tmp_path, capsys):
    import json

    # Every run already finished (nothing is trained): main only collects and prints.
    for root, steps in ((tmp_path / "now", 2500), (tmp_path / "before", 1000)):
        for name, overrides in ablation_cpu.named_runs():
            workdir = root / f"{name}_s{overrides['seed']}"
            (workdir / "eval").mkdir(parents=True)
            result = {"ari_vs_all": steps / 10000, "hiou_e_vs_all": 0.1, "max_ari": 0.2}
            (workdir / "eval" / f"{ablations.SETUP}.json").write_text(json.dumps(result))
            (workdir / "config.json").write_text(json.dumps({"total_steps": steps}))
    argv = ["ablations.py", f"--workdir={tmp_path / 'now'}", f"--compare={tmp_path / 'before'}"]
    monkeypatch.setattr("sys.argv", argv)
    ablations.main()
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("|")]
    rows = {line.split("|")[1].strip(): line for line in lines}
    assert rows["paper"].startswith("| paper | 0,1 | 0.250 +- 0.000 |")
    assert rows["paper"].endswith("| 0.100 +- 0.000 |")  # ARI at 1,000 steps
    assert json.loads((tmp_path / "now" / "ablations.json").read_text())[0]["name"] == "paper"
