"""W&B mirror of the run logs: offline runs, reading them back, conversion, failure modes.

Everything runs in W&B offline mode (or against a closed localhost port); the
W&B home/config/cache folders point into a temporary directory.
"""

from __future__ import annotations

import dataclasses
import math
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

wandb = pytest.importorskip("wandb")

from second_order.suite.tracking import (  # noqa: E402
    runs,  # noqa: E402
    wandb_io,
    wandb_leet,
)
from second_order.suite.tracking.wandb_convert import download_project, record_to_run_dir  # noqa: E402
from second_order.suite.tracking.wandb_io import (  # noqa: E402
    WandbRecord,
    log_records,
    offline_run_dirs,
    read_offline_run,
    read_offline_runs,
)
from second_order.suite.tracking.wandb_logger import WandbLogger, WandbWarning  # noqa: E402

needs_leet = pytest.mark.skipif(not wandb_leet.available(), reason="`wandb leet inspect --json` needs wandb >= 0.31")
READERS = [pytest.param("leet", marks=needs_leet), "builtin"]


@pytest.fixture(scope="module", autouse=True)
def _isolated_wandb(wandb_sandbox: Path) -> Path:
    return wandb_sandbox


def _step_rows(steps: range) -> list[dict[str, Any]]:
    rows = []
    for i in steps:
        rows.append(
            {
                "step": i,
                "epoch": i // 20,
                "time_s": 0.0137 * i + 1e-9 * i * i,
                "train/loss": 2.3 / (1 + 0.1 * i),
                "opt/damping": np.float32(1e-3 * 1.5 ** (i % 7)),  # numpy scalar: exact float32 value
                "opt/cg_iters": i % 9,
                "opt/rho": math.nan if i == 10 else (math.inf if i == 11 else 0.25 + 1 / i),
            }
        )
    return rows


def _eval_row(step: int) -> dict[str, Any]:
    return {
        "step": step,
        "epoch": step // 20,
        "time_s": 0.0137 * step + 0.5,
        "eval/loss": 1.0 / step,
        "eval/acc": 0.9 + step / 1e4,
    }


CONFIG = {
    "optimizer": {"name": "hf_gauss_newton", "lr": 1.0, "cg": {"max_iters": 50, "tol": 1e-4}},
    "seed": 3,
    "experiment_name": "unit",
    "layers": [784, 32, 10],
}
SUMMARY = {
    "optimizer": "hf_gauss_newton",
    "experiment": "unit",
    "seed": 3,
    "status": "completed",
    "train_loss": 0.123,
    "test_loss": 0.2,
    "test_acc": 0.905,
    "steps": 50,
    "epochs_completed": 2,
    "train_time_s": 1.25,
    "diverged": False,
    "diverged_step": None,
}


def _same(a: Any, b: Any) -> bool:
    """Exact equality, NaN equal to NaN.  (W&B's JSON history form writes 1.0 as 1.)"""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _expected(row: dict[str, Any]) -> dict[str, Any]:
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in row.items()}


def _user_keys(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if not k.startswith("_")}


def _logger(run_dir: Path, mode: str = "offline", **kw: Any) -> WandbLogger:
    args: dict[str, Any] = dict(
        mode=mode,
        project="second-order-tests",
        entity=None,
        run_dir=run_dir,
        name="hfgn-s3",
        group="unit-group",
        tags=["unit", "mnist"],
        config=CONFIG,
        job_type="train",
    )
    args.update(kw)
    return WandbLogger(**args)


@pytest.fixture(scope="module")
def offline_run(tmp_path_factory: pytest.TempPathFactory, wandb_sandbox: Path):
    """One real offline run: 50 step rows in chunks, 2 eval rows, a summary."""
    run_dir = tmp_path_factory.mktemp("run")
    t0 = time.perf_counter()
    logger = _logger(run_dir)
    init_s = time.perf_counter() - t0
    assert logger.active and logger.run_id
    rows = _step_rows(range(1, 51))
    logged: list[dict[str, Any]] = []
    for lo in range(0, 50, 16):
        chunk = rows[lo : lo + 16]
        logger.log_steps(chunk)
        logged += chunk
        for ev in (25, 50):
            if chunk[0]["step"] <= ev <= chunk[-1]["step"]:
                logger.log_eval(_eval_row(ev))
                logged.append(_eval_row(ev))
    logger.set_summary(SUMMARY)
    logger.finish()
    logger.finish()  # idempotent
    print(f"offline wandb.init: {init_s:.2f} s")
    return run_dir, logger.run_id, [_expected(r) for r in logged]


def test_offline_history_roundtrip(offline_run):
    run_dir, run_id, logged = offline_run
    dirs = offline_run_dirs(run_dir)
    assert len(dirs) == 1 and dirs[0].name.startswith("offline-run-") and dirs[0].parent == run_dir / "wandb"
    rec = read_offline_run(dirs[0])

    assert len(rec.history) == len(logged)
    for got, want in zip(rec.history, logged):
        got_user = _user_keys(got)
        assert got_user.keys() == want.keys()
        assert all(_same(got_user[k], want[k]) for k in want), (got_user, want)
        assert {"_step", "_runtime", "_timestamp"} <= got.keys()
    assert [r["_step"] for r in rec.history] == list(range(len(logged)))

    assert rec.config == CONFIG
    assert {k: rec.summary[k] for k in SUMMARY} == SUMMARY
    assert rec.summary["eval/acc"] == logged[-1]["eval/acc"]  # W&B's automatic last-value summary
    assert (rec.run_id, rec.name, rec.group, rec.tags) == (run_id, "hfgn-s3", "unit-group", ["unit", "mnist"])
    assert (rec.project, rec.job_type, rec.exit_code) == ("second-order-tests", "train", 0)

    # define_metric made it into the log: train/opt/eval against "step", time_s declared
    metrics = {}
    for r in log_records(dirs[0]):
        m = r.get("metric", {})
        if r["type"] == "metric" and m.get("options", {}).get("defined"):  # wandb < 0.31 also logs expansions
            metrics[m.get("name") or m.get("glob_name")] = m.get("step_metric", "")
    assert metrics == {
        "step": "",
        "time_s": "",
        "epoch": "step",
        "train/*": "step",
        "opt/*": "step",
        "eval/*": "step",
        "val/*": "step",
        "curvature/*": "step",
    }


def test_record_to_run_dir_loads(offline_run, tmp_path):
    run_dir, _, logged = offline_run
    rec = read_offline_runs(run_dir)
    out = record_to_run_dir(rec, tmp_path / "converted")
    run = runs.load_run(out)

    steps = [r for r in logged if "train/loss" in r]
    evals = [r for r in logged if "eval/loss" in r]
    cols = {
        "step": "step",
        "epoch": "epoch",
        "train_loss": "train/loss",
        "time_s": "time_s",
        "damping": "opt/damping",
        "cg_iters": "opt/cg_iters",
        "rho": "opt/rho",
    }
    assert list(run.steps) == list(runs.STEP_COLUMNS) + ["cg_iters", "damping", "rho"]
    for col, key in cols.items():
        np.testing.assert_array_equal(run.steps[col], np.array([r[key] for r in steps], dtype=float))
    assert list(run.evals) == list(runs.EVAL_COLUMNS)
    for col, key in {
        "epoch": "epoch",
        "step": "step",
        "time_s": "time_s",
        "test_loss": "eval/loss",
        "test_acc": "eval/acc",
    }.items():
        np.testing.assert_array_equal(run.evals[col], np.array([r[key] for r in evals], dtype=float))
    assert run.summary == {**SUMMARY, "wandb_run_id": rec.run_id}  # the id: to tell a copy from its run files
    assert rec.run_id
    assert run.config == CONFIG
    assert (run.optimizer, run.experiment, run.seed) == ("hf_gauss_newton", "unit", 3)


class _FakeRun:
    """Just the ``wandb.apis.public.Run`` attributes download_project reads."""

    def __init__(self, rec: WandbRecord, run_id: str, group: str):
        self.id, self.name, self.group, self.tags = run_id, rec.name, group, rec.tags
        self.config = dict(rec.config, _wandb={"internal": 1})
        self.summary = dict(rec.summary, _wandb={"runtime": 1})
        self._rows = rec.history
        self.scans = 0

    def scan_history(self):
        self.scans += 1
        return iter([dict(r) for r in self._rows])

    def history(self, *a: Any, **k: Any):  # the sampled API must not be used
        raise AssertionError("download_project must use scan_history()")


class _FakeApi:
    def __init__(self, all_runs: list[_FakeRun]):
        self.all_runs = all_runs
        self.calls: list[tuple[str, dict | None]] = []

    def runs(self, path: str, filters: dict | None = None):
        self.calls.append((path, filters))
        group = (filters or {}).get("group")
        return [r for r in self.all_runs if group is None or r.group == group]


def test_download_project_with_fake_api(offline_run, tmp_path):
    run_dir, _, logged = offline_run
    rec = read_offline_runs(run_dir)  # real W&B output rows
    fake = _FakeApi([_FakeRun(rec, "aaa111", "g1"), _FakeRun(rec, "bbb222", "g1"), _FakeRun(rec, "ccc333", "g2")])

    written = download_project("ent/proj", tmp_path / "dl", group="g1", api=fake)
    assert fake.calls == [("ent/proj", {"group": "g1"})]
    assert written == [tmp_path / "dl" / "g1" / "hfgn-s3", tmp_path / "dl" / "g1" / "hfgn-s3-bbb222"]
    n_steps = sum("train/loss" in r for r in logged)
    for path in written:
        run = runs.load_run(path)
        assert len(run.steps["step"]) == n_steps and len(run.evals["step"]) == 2
        np.testing.assert_array_equal(run.steps["train_loss"], [r["train/loss"] for r in logged if "train/loss" in r])
        assert run.summary["status"] == "completed" and run.config == CONFIG
    assert all(r.scans == (1 if r.group == "g1" else 0) for r in fake.all_runs)

    everything = download_project("ent/proj", tmp_path / "all", api=fake)
    assert fake.calls[-1] == ("ent/proj", {})
    assert [p.parent for p in everything] == [tmp_path / "all" / "proj"] * 3


def test_resumed_run_continues_and_merges(tmp_path):
    first = _logger(tmp_path)
    first.log_steps(_step_rows(range(1, 31)))
    first.finish(exit_code=1)
    # restart from a checkpoint at step 20: steps 21..30 are logged again
    second = _logger(tmp_path, resume_id=first.run_id)
    assert second.run_id == first.run_id
    second.log_steps(_step_rows(range(21, 41)))
    second.log_eval(_eval_row(40))
    second.finish()

    assert len(offline_run_dirs(tmp_path)) == 2
    rec = read_offline_runs(tmp_path)
    assert rec.run_id == first.run_id and rec.exit_code == 0
    run = runs.load_run(record_to_run_dir(rec, tmp_path / "local"))
    np.testing.assert_array_equal(run.steps["step"], np.arange(1, 41))
    np.testing.assert_array_equal(run.evals["step"], [40])

    # A third segment killed before W&B wrote its first block: a header-only log, skipped.
    header = next(offline_run_dirs(tmp_path)[0].glob("run-*.wandb")).read_bytes()[:7]
    killed = tmp_path / "wandb" / "offline-run-29991231_235959-killed"
    killed.mkdir()
    (killed / "run-killed.wandb").write_bytes(header)
    with pytest.warns(UserWarning, match=r"run-killed.wandb: no W&B records.*skipped"):
        again = read_offline_runs(tmp_path)
    assert again.history == rec.history


@pytest.mark.parametrize("reader", READERS)
def test_truncated_log_reads_prefix(offline_run, tmp_path, reader):
    run_dir, _, logged = offline_run
    src = next(offline_run_dirs(run_dir)[0].glob("run-*.wandb"))
    cut = tmp_path / "run-cut.wandb"
    cut.write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    with pytest.warns(UserWarning, match=r"run-cut.wandb: truncated or corrupt W&B log"):
        rec = read_offline_run(cut, reader=reader)
    assert 0 < len(rec.history) < len(logged)
    assert all(_user_keys(g).keys() == w.keys() for g, w in zip(rec.history, logged))
    for name, data in (("junk.wandb", b"not a log at all"), ("short.wandb", b"junk"), ("empty.wandb", b"")):
        (tmp_path / name).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # leet warns about the incomplete file first
            with pytest.raises(ValueError, match=rf"{name}: (not a|no W&B records).*; pass a run-\*.wandb file") as err:
                read_offline_run(tmp_path / name, reader=reader)
        assert "\n" not in str(err.value)
    with pytest.raises(FileNotFoundError, match="nope: no such W&B run folder"):
        read_offline_run(tmp_path / "nope", reader=reader)


def _deep_same(a: Any, b: Any) -> bool:
    """Equality through dicts and lists, NaN equal to NaN (1 == 1.0 as in Python)."""
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_deep_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_deep_same(x, y) for x, y in zip(a, b))
    return _same(a, b)


@pytest.fixture(scope="module")
def edge_run(tmp_path_factory: pytest.TempPathFactory, wandb_sandbox: Path) -> Path:
    """A run written by wandb directly: nested and dotted keys, strings, NaN/inf in lists, summary
    edits and removals, a later config update, exit code 3."""
    run_dir = tmp_path_factory.mktemp("edge")
    run = wandb.init(
        mode="offline",
        dir=str(run_dir),
        project="edge",
        config={"a.b": 1, "opt": {"lr": 0.5}},
        reinit="create_new",
        settings=wandb.Settings(silent=True, console="off", x_disable_stats=True),
    )
    run.log(
        {"s": "text", "d": {"x": 1, "y": {"z": 2.5}}, "dot.key": 3, "l": [math.nan, 1], "big": 2**60, "neg": -math.inf}
    )
    run.log({"step": 2, "train/loss": math.nan})
    run.config.update({"later": [1, {"q": None}]})
    run.summary["nested"] = {"a": 1, "b": 2}
    run.summary["nested"]["a"] = 7
    del run.summary["nested"]["b"]
    del run.summary["s"]
    run.finish(exit_code=3)
    assert wandb_io.wait_for_transaction_log(run.settings.sync_file)
    return run_dir


@needs_leet
@pytest.mark.parametrize("which", ["offline_run", "edge_run", "resumed"])
def test_leet_and_builtin_readers_agree(which, request, tmp_path):
    """`wandb leet inspect --json` and the fallback parser give the same records and the same run."""
    if which == "resumed":
        first = _logger(tmp_path)
        first.log_steps(_step_rows(range(1, 11)))
        first.finish(exit_code=1)
        second = _logger(tmp_path, resume_id=first.run_id)
        second.log_steps(_step_rows(range(6, 16)))
        second.set_summary({"status": "completed"})
        second.finish()
        run_dir = tmp_path
    else:
        fixture = request.getfixturevalue(which)
        run_dir = fixture[0] if isinstance(fixture, tuple) else fixture
    for d in offline_run_dirs(run_dir):
        leet, builtin = list(log_records(d, reader="leet")), list(log_records(d, reader="builtin"))
        assert [r["type"] for r in leet] == [r["type"] for r in builtin]
        for a, b in zip(leet, builtin):
            kind = a["type"]
            if kind in ("history", "summary", "config", "metric", "exit"):
                assert _deep_same(a, b), (a, b)
            elif kind == "run":  # the fallback fills only the run fields the reader uses
                assert _deep_same({k: a[kind].get(k) for k in b[kind]}, b[kind]), (a, b)
    leet_rec, builtin_rec = read_offline_runs(run_dir, reader="leet"), read_offline_runs(run_dir, reader="builtin")
    assert _deep_same(dataclasses.asdict(leet_rec), dataclasses.asdict(builtin_rec))
    assert leet_rec.history and leet_rec.exit_code == (3 if which == "edge_run" else 0)
    if which == "edge_run":
        assert leet_rec.config == {"a.b": 1, "opt": {"lr": 0.5}, "later": [1, {"q": None}]}
        assert leet_rec.summary["nested"] == {"a": 7} and "s" not in leet_rec.summary
        row = leet_rec.history[0]
        assert (row["d.x"], row["d.y.z"], row["dot.key"], row["s"], row["big"]) == (1, 2.5, 3, "text", 2**60)
        assert math.isnan(row["l"][0]) and row["neg"] == -math.inf and math.isnan(leet_rec.history[1]["train/loss"])


def test_builtin_reader_is_the_fallback_without_leet(offline_run, monkeypatch):
    run_dir, run_id, logged = offline_run
    expected = read_offline_runs(run_dir)
    monkeypatch.setattr(wandb, "__version__", "0.30.0")  # has `leet inspect`, but without --json

    def no_leet(*a: Any, **k: Any) -> None:
        raise AssertionError("wandb leet must not be called before wandb 0.31")

    monkeypatch.setattr(wandb_leet, "_run", no_leet)
    assert not wandb_leet.available()
    rec = read_offline_runs(run_dir)
    assert rec.run_id == run_id and len(rec.history) == len(logged)
    assert _deep_same(dataclasses.asdict(rec), dataclasses.asdict(expected))
    assert wandb_io.transaction_log_finished(next(offline_run_dirs(run_dir)[0].glob("run-*.wandb")))
    with pytest.raises(RuntimeError, match=r"needs wandb >= 0\.31 \(installed: 0\.30\.0\); upgrade wandb"):
        read_offline_runs(run_dir, reader="leet")


def test_log_failure_degrades_to_warning(tmp_path, monkeypatch):
    logger = _logger(tmp_path)
    assert logger.active

    def boom(*a: Any, **k: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(logger._run, "log", boom)
    with pytest.warns(WandbWarning, match=r"W&B logging disabled.*disk on fire.*local logs in"):
        logger.log_steps(_step_rows(range(1, 3)))
    assert not logger.active
    logger.log_eval(_eval_row(2))  # no-ops, no second warning
    logger.set_summary({"status": "completed"})
    logger.finish()


@pytest.mark.parametrize("api_key", [None, "x" * 40], ids=["no-key", "key-but-no-server"])
def test_online_without_network_warns_and_continues(tmp_path, monkeypatch, api_key, wandb_sandbox):
    if api_key:
        monkeypatch.setenv("WANDB_API_KEY", api_key)
    t0 = time.perf_counter()
    with pytest.warns(WandbWarning, match=r"W&B logging disabled \(online\).*local logs in"):
        logger = _logger(tmp_path, mode="online", init_timeout=2.0)
    elapsed = time.perf_counter() - t0
    assert elapsed < 20, elapsed
    assert not logger.active and logger.run_id is None
    logger.log_steps(_step_rows(range(1, 5)))
    logger.log_eval(_eval_row(4))
    logger.set_summary(SUMMARY)
    logger.finish(exit_code=0)
    assert not (wandb_sandbox / "netrc").exists()  # never stored credentials


def test_disabled_is_noop(tmp_path, monkeypatch):
    def no_init(*a: Any, **k: Any) -> None:
        raise AssertionError("wandb.init must not be called when disabled")

    monkeypatch.setattr(wandb, "init", no_init)
    logger = _logger(tmp_path / "run", mode="disabled")
    assert not logger.active and logger.run_id is None
    logger.log_steps(_step_rows(range(1, 5)))
    logger.log_eval(_eval_row(4))
    logger.set_summary(SUMMARY)
    logger.finish()
    assert not (tmp_path / "run").exists()
    with pytest.raises(ValueError, match="mode"):
        _logger(tmp_path, mode="dryrun")
