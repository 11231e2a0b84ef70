"""Sweeps through the launcher presets (configs/hydra/launcher/), the local config, pre-emption and requeue."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from conftest import REPO, compose_config
from test_pipeline import train_cli

from second_order.suite import experiment
from second_order.suite.config import ConfigError
from second_order.suite.tracking import runs
from second_order.suite.training import checkpoint
from second_order.suite.training.stop import PREEMPT_SIGNAL_ENV, StopSignals, preemption_signal, resumes_by_itself

#: A run long enough to be pre-empted mid-training, one step per chunk (a stop lands within a step).
PREEMPTIBLE = [
    "optimizer=hessian_free",
    "trainer.max_steps=400",
    "trainer.chunk_steps=1",
    "logger.wandb.mode=disabled",
]


def launcher_config(*overrides: str, env: dict | None = None) -> dict:
    """``hydra.launcher`` as ``scripts/train.py --cfg hydra`` prints it."""
    proc = train_cli("--cfg", "hydra", *overrides, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return yaml.safe_load(proc.stdout)["hydra"]["launcher"]


def test_slurm_gpu_preset_composes_on_the_plugin_schema():
    launcher = launcher_config("hydra/launcher=slurm_gpu", "hydra.launcher.partition=a100")
    assert launcher["_target_"].endswith("submitit_launcher.SlurmLauncher")
    assert launcher["partition"] == "a100" and launcher["gpus_per_node"] == 1
    assert launcher["signal_delay_s"] > 0 and launcher["max_num_timeout"] > 0
    assert launcher["additional_parameters"] == {"requeue": True}
    assert "export XLA_PYTHON_CLIENT_PREALLOCATE=false" in launcher["setup"]
    assert "account" in launcher  # the rest of the plugin's keys are there, typed
    bad = train_cli("--cfg", "hydra", "hydra/launcher=slurm_gpu", "hydra.launcher.gpus_per_node=two", timeout=60)
    assert bad.returncode == 2 and "hydra.launcher.gpus_per_node" in bad.stderr


def test_local_presets_compose():
    assert launcher_config("hydra/launcher=local_processes")["_target_"].endswith("submitit_launcher.LocalLauncher")
    parallel = launcher_config("hydra/launcher=parallel", "hydra.launcher.n_jobs=3")
    assert parallel["_target_"].endswith("JoblibLauncher") and parallel["n_jobs"] == 3


def test_slurm_gpu_preset_reaches_sbatch(tmp_path):
    """The real launcher writes the batch script; only the cluster is absent (sbatch records it and fails)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "submitted.sh"
    bin_dir.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text('#!/bin/sh\ncp "$1" "$FAKE_SBATCH_RECORD"\necho "sbatch: error: no cluster here" >&2\nexit 1\n')
    srun = bin_dir / "srun"  # submitit checks that it exists; it is only used inside a job
    srun.write_text("#!/bin/sh\nexit 1\n")
    for tool in (sbatch, srun):
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_SBATCH_RECORD": str(record)}
    env[PREEMPT_SIGNAL_ENV] = "USR2"
    proc = train_cli(
        "-m",
        "hydra/launcher=slurm_gpu",
        "hydra.launcher.partition=a100",
        "optimizer=sgd",
        "seed=0,1",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
        env=env,
        timeout=120,
    )
    assert proc.returncode != 0 and record.exists(), proc.stderr[-2000:]
    script = record.read_text().splitlines()
    for line in (
        "#SBATCH --partition=a100",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --requeue",
        "#SBATCH --array=0-1%2",  # both jobs at once (array_parallelism caps it at 32)
        "export XLA_PYTHON_CLIENT_PREALLOCATE=false",
    ):
        assert line in script, f"{line!r} not in the batch script:\n" + "\n".join(script)


def test_local_config_example_composes_and_default_is_untracked():
    proc = train_cli("--cfg", "all", "local=example", timeout=60)
    assert proc.returncode == 0, proc.stderr
    cfg = yaml.safe_load(proc.stdout)
    assert cfg["data"]["dir"] == "${oc.env:MNIST_DIR,null}"  # each dataset its own variable, no global data.dir
    assert cfg["hydra"]["launcher"]["account"] == "my-account"
    assert cfg["hydra"]["launcher"]["_target_"].endswith("SlurmLauncher")
    ignored = subprocess.run(["git", "check-ignore", "-q", "configs/local/default.yaml"], cwd=REPO)
    assert ignored.returncode == 0, "configs/local/default.yaml must be ignored by git"


def test_second_order_no_local_config_leaves_the_machine_local_config_out(tmp_path):
    """A local/default.yaml on the config search path (here through --config-dir) is loaded by every
    run, unless SECOND_ORDER_NO_LOCAL_CONFIG=1 (which the tests set) or the command line says otherwise."""
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text(
        "# @package _global_\ndefaults:\n  - override /hydra/launcher: slurm_gpu\n"
    )
    with_it = {"SECOND_ORDER_NO_LOCAL_CONFIG": "0"}
    extra = ("--config-dir", str(tmp_path))
    assert launcher_config(*extra, env=with_it)["_target_"].endswith("SlurmLauncher")
    assert launcher_config(*extra)["_target_"].endswith("BasicLauncher")  # conftest set it
    assert launcher_config(*extra, "local=default")["_target_"].endswith("SlurmLauncher")  # chosen: kept


def test_the_local_config_switch_joins_the_overrides_wherever_the_flags_are(monkeypatch):
    """Hydra's argparse takes one run of overrides: ``~local`` goes just before the first."""
    from second_order.suite.local_config import with_local_config_switch

    monkeypatch.setenv("SECOND_ORDER_NO_LOCAL_CONFIG", "1")
    assert with_local_config_switch(["a=1", "--cfg", "job"]) == ["~local", "a=1", "--cfg", "job"]
    assert with_local_config_switch(["-m", "--config-dir", "d", "a=1,2", "b=3"]) == [
        "-m", "--config-dir", "d", "~local", "a=1,2", "b=3"
    ]  # fmt: skip
    assert with_local_config_switch(["--info", "defaults"]) == ["~local", "--info", "defaults"]
    assert with_local_config_switch(["--cfg", "hydra"]) == ["~local", "--cfg", "hydra"]
    assert with_local_config_switch(["local=default", "--cfg", "job"]) == ["local=default", "--cfg", "job"]
    monkeypatch.setenv("SECOND_ORDER_NO_LOCAL_CONFIG", "0")
    assert with_local_config_switch(["a=1", "--cfg", "job"]) == ["a=1", "--cfg", "job"]


def test_a_launcher_key_the_chosen_launcher_lacks_hints_at_the_local_config(monkeypatch, tmp_path):
    from second_order.suite.local_config import launcher_key_hint

    hydra_says = "Could not override 'hydra/launcher'; Key 'account' not in 'JobLibLauncherConf'"
    monkeypatch.setenv("SECOND_ORDER_NO_LOCAL_CONFIG", "0")
    assert launcher_key_hint(hydra_says, tmp_path) == ""  # no local config: nothing to hint at
    (tmp_path / "local").mkdir()
    (tmp_path / "local" / "default.yaml").write_text("# @package _global_\n")
    hint = launcher_key_hint(hydra_says, tmp_path)
    assert "hydra.launcher.account" in hint and "add ~local" in hint
    assert launcher_key_hint("Key 'lr' not in 'AdamConf'", tmp_path) == ""  # not a launcher key
    monkeypatch.setenv("SECOND_ORDER_NO_LOCAL_CONFIG", "1")
    assert launcher_key_hint(hydra_says, tmp_path) == ""  # the local config is already left out


def test_the_slurm_launcher_off_a_cluster_is_one_line(tmp_path, monkeypatch):
    """submitit's own error without ``srun`` (this machine has none) becomes the documented one line."""
    import shutil

    import submitit

    from second_order.suite import cli

    if shutil.which("srun"):
        pytest.skip("this machine has srun")
    with pytest.raises(RuntimeError) as raised:
        submitit.AutoExecutor(folder=tmp_path / "jobs", cluster="slurm")
    monkeypatch.setenv("SECOND_ORDER_NO_LOCAL_CONFIG", "1")
    message = cli.one_line(raised.value)
    assert message is not None and message.startswith("the SLURM launcher (hydra/launcher=slurm_gpu) needs")
    assert "hydra/launcher=basic" in message and "~local" not in message
    assert cli.one_line(RuntimeError("another runtime error")) is None  # a bug keeps its traceback


def test_preemption_signal_and_who_resumes_by_itself(monkeypatch):
    monkeypatch.delenv(PREEMPT_SIGNAL_ENV, raising=False)
    assert preemption_signal() == signal.SIGUSR2
    monkeypatch.setenv(PREEMPT_SIGNAL_ENV, "USR1")
    assert preemption_signal() == signal.SIGUSR1
    monkeypatch.delenv("SLURM_RESTART_COUNT", raising=False)
    assert resumes_by_itself({"status": "interrupted", "signal": int(signal.SIGUSR1)})
    assert not resumes_by_itself({"status": "interrupted", "signal": int(signal.SIGTERM)})
    assert not resumes_by_itself({"status": "running"})
    assert not resumes_by_itself({"status": "completed", "signal": int(signal.SIGUSR1)})
    assert not resumes_by_itself(None)
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # SLURM requeued the job (e.g. PreemptMode=REQUEUE)
    assert resumes_by_itself({"status": "interrupted", "signal": int(signal.SIGTERM)})
    assert resumes_by_itself({"status": "running"})  # killed before it could write its record
    assert not resumes_by_itself({"status": "completed"}) and not resumes_by_itself({"status": "failed"})
    monkeypatch.setenv(PREEMPT_SIGNAL_ENV, "NOPE")
    with pytest.raises(ConfigError, match=PREEMPT_SIGNAL_ENV):
        preemption_signal()


def test_stop_signals_catch_the_preemption_signal_and_restore_the_handler(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(PREEMPT_SIGNAL_ENV, raising=False)
    calls: list[int] = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: calls.append(signum))
    try:
        with StopSignals() as stop:
            signal.raise_signal(signal.SIGUSR2)
        assert stop.received == signal.SIGUSR2 and not calls  # the run's handler, not the one it found
        signal.raise_signal(signal.SIGUSR2)
        assert calls == [signal.SIGUSR2]  # restored on exit
    finally:
        signal.signal(signal.SIGUSR2, previous)


# --------------------------------------------------------------------------- end to end


def losses_as_written(run_dir: Path) -> list[str]:
    return [line.split(",")[2] for line in (run_dir / runs.STEPS_FILE).read_text().splitlines()[1:]]


def wait_for_rows(
    find_run_dir: Callable[[], Path | None], rows: int, proc: subprocess.Popen, timeout: float = 180
) -> Path:
    """The run directory once its steps.csv has ``rows`` rows (fails if the process ends first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_dir = find_run_dir()
        if run_dir is not None and (run_dir / runs.STEPS_FILE).exists():
            if (run_dir / runs.STEPS_FILE).read_text().count("\n") > rows:
                return run_dir
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.02)
    pytest.fail(f"no {rows} training steps within {timeout} s")


def submitit_task_pid(sweep_dir: Path) -> int | None:
    """The process running a submitit job of this sweep (``python -m submitit.core._submit <folder>``)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in args and any(str(sweep_dir).encode() in a for a in args):
            return int(cmdline.parent.name)
    return None


@pytest.fixture(scope="module")
def reference_losses(real_mnist_dir, tmp_path_factory) -> list[str]:
    """The losses of the pre-emptible run, uninterrupted."""
    run_dir = tmp_path_factory.mktemp("reference")
    experiment.run(compose_config([*PREEMPTIBLE, f"data.dir={real_mnist_dir}", "trainer.progress=false"]), run_dir)
    return losses_as_written(run_dir)


def check_resumed(run_dir: Path, stopped_at: int, reference: list[str]) -> None:
    summary = runs.read_summary(run_dir) or {}
    assert summary["status"] == "budget" and summary["steps"] == 400
    assert [s["start_step"] for s in summary["segments"]] == [0, stopped_at]  # continued, not restarted
    assert losses_as_written(run_dir) == reference  # bitwise, as written


@pytest.mark.slow
def test_two_job_sweep_through_submitit_local(real_mnist_dir, tmp_path):
    older = tmp_path / "sgd" / "seed7"  # an earlier run in the same folder: not a job of this sweep
    older.mkdir(parents=True)
    (older / "summary.json").write_text('{"status": "completed", "optimizer": "sgd", "seed": 7}')
    proc = train_cli(
        "-m",
        "hydra/launcher=local_processes",
        "optimizer=sgd",
        "seed=0,1",
        "trainer.max_steps=20",
        "logger.wandb.mode=disabled",
        f"data.dir={real_mnist_dir}",
        f"hydra.sweep.dir={tmp_path}",
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    jobs = json.loads((tmp_path / "sweep_summary.json").read_text())["jobs"]
    assert sorted(j["seed"] for j in jobs) == [0, 1], jobs  # noted by the jobs in their own processes
    assert all(j["status"] == "budget" and j["steps"] == 20 for j in jobs), jobs
    assert list(tmp_path.glob(".submitit/*/*_result.pkl")), "the jobs did not run through submitit"
    # each job records its own invocation (written by the job, not by Hydra before it starts)
    for seed in (0, 1):
        overrides = yaml.safe_load((tmp_path / f"sgd/seed{seed}/.hydra/overrides.yaml").read_text())
        assert f"seed={seed}" in overrides and "trainer.max_steps=20" in overrides


@pytest.mark.slow
def test_preempted_run_checkpoints_and_resumes_when_relaunched(real_mnist_dir, tmp_path, reference_losses):
    run_dir = tmp_path / "run"
    command = [*PREEMPTIBLE, f"data.dir={real_mnist_dir}", f"hydra.run.dir={run_dir}"]
    env = {k: v for k, v in os.environ.items() if k != PREEMPT_SIGNAL_ENV}
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "scripts" / "train.py"), *command, "trainer.progress=false"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for_rows(lambda: run_dir, 30, proc)
        proc.send_signal(signal.SIGUSR2)
        _, stderr = proc.communicate(timeout=120)
    finally:
        proc.kill()  # a no-op once it has ended
    assert proc.returncode == 128 + signal.SIGUSR2, stderr
    summary = runs.read_summary(run_dir) or {}
    assert summary["status"] == "interrupted" and summary["signal"] == signal.SIGUSR2
    stopped_at = summary["steps"]
    assert 30 <= stopped_at < 400, "the signal arrived too late to test resuming"
    assert checkpoint.exists(run_dir) and checkpoint.latest_step(run_dir) == stopped_at

    relaunched = train_cli(*command, env=env)  # as a requeue would: the same command, no trainer.resume
    assert relaunched.returncode == 0, relaunched.stderr
    check_resumed(run_dir, stopped_at, reference_losses)
    again = train_cli(*command, env=env)  # a finished run is not resumed by itself
    assert again.returncode == 2 and "trainer.resume=true" in again.stderr


@pytest.mark.slow
def test_preempted_submitit_job_is_requeued_and_resumes(real_mnist_dir, tmp_path, reference_losses):
    if not Path("/proc/self/cmdline").exists():
        pytest.skip("finds the job's process through /proc")
    sweep_dir = tmp_path / "sweep"
    env = {k: v for k, v in os.environ.items() if k != PREEMPT_SIGNAL_ENV}
    proc = subprocess.Popen(
        [
            sys.executable,
            str(REPO / "scripts" / "train.py"),
            "-m",
            "hydra/launcher=local_processes",
            *PREEMPTIBLE,
            f"data.dir={real_mnist_dir}",
            f"hydra.sweep.dir={sweep_dir}",
            "trainer.progress=false",
        ],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        run_dir = wait_for_rows(lambda: next((p.parent for p in sweep_dir.rglob(runs.STEPS_FILE)), None), 30, proc)
        pid = submitit_task_pid(sweep_dir)
        assert pid is not None, "no submitit job process found"
        os.kill(pid, signal.SIGUSR2)  # what SLURM sends signal_delay_s before the time limit
        _, stderr = proc.communicate(timeout=600)
    finally:
        proc.kill()
        for _ in range(50):  # a job outliving a failed test
            if (left := submitit_task_pid(sweep_dir)) is None:
                break
            with contextlib.suppress(ProcessLookupError):
                os.kill(left, signal.SIGKILL)
            time.sleep(0.1)
    assert proc.returncode == 0, stderr[-2000:]
    logs = "".join(p.read_text() for p in sorted(sweep_dir.glob(".submitit/*/*_log.*")))
    assert "this job is preempted" in logs and "Requeued job" in logs, logs[-2000:]
    summary = runs.read_summary(run_dir) or {}
    stopped_at = summary["segments"][-1]["start_step"]
    assert 30 <= stopped_at < 400, "the signal arrived too late to test resuming"
    check_resumed(run_dir, stopped_at, reference_losses)
