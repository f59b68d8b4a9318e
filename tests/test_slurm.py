"""The Slurm launcher against a real single-node Slurm cluster (scripts/slurm_cluster.sh: munged,
mariadbd, slurmdbd, slurmctld, slurmd on loopback), started once for this test session and
stopped at its end. Skipped, saying why, where the cluster cannot be had (not root, or the
packages neither installed nor installable)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import saerun as run_cli
from safetensors.torch import load_file

from saerun.registry import Registry
from saerun.spec import SlurmLauncher, launcher_with, slurm_minutes

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "slurm_cluster.sh"
CLUSTER_DIR = Path(os.environ.get("SAERUN_SLURM_DIR", "/tmp/saerun-slurm"))

# Two activation groups (the shuffle seed splits groups), one SAE each: one job array of two
# tasks. No normalisation estimate: a job is then mostly Python start-up and the model load.
SPEC = """\
name: slurm-tiny
model: {name: saerun/tiny-stdlib}
site: {hook_name: blocks.1.hook_resid_post}
data: {context_size: 64, train_tokens: 4096, eval_tokens: 1024, shuffle_buffer_tokens: 2048,
       lm_batch_sequences: 16, normalize: none}
sae: {architecture: relu, d_sae: 128}
train: {lr: 5e-3, batch_tokens: 512, checkpoint_every_tokens: 2048, log_every_steps: 4}
eval: {metrics: [l0, mse, fvu, dead]}
sweep:
  grid: {data.shuffle_seed: [0, 1]}
"""
ONE_GROUP = SPEC.replace("  grid: {data.shuffle_seed: [0, 1]}\n", "  seeds: [0]\n")


# -- no cluster needed -------------------------------------------------------------------------


def test_time_limits_parse_to_whole_minutes():
    assert [slurm_minutes(t) for t in ("90m", "6h", "2d", "1d12h", "45", "30s")] == [
        90, 360, 2880, 2160, 45, 1]
    assert [slurm_minutes(t) for t in ("1-12:00:00", "02:30:00", "10:30", "1-6")] == [
        2160, 150, 11, 1800]
    with pytest.raises(ValueError, match="not a time limit"):
        slurm_minutes("six hours")


def test_command_line_options_go_over_the_spec_launcher():
    spec = SlurmLauncher(kind="slurm", partition="cpu", time="2h", sbatch={"account": "lab"})
    out = launcher_with(spec, {"partition": "gpu", "gpus_per_job": 1, "time": None})
    assert (out.partition, out.gpus_per_job, out.time, out.sbatch) == ("gpu", 1, "2h",
                                                                      {"account": "lab"})
    local = launcher_with(spec, {"kind": "local"})
    assert local.kind == "local" and local.gpus == "all"


def test_a_slurm_option_with_the_local_launcher_says_which_flag(tmp_path, cli):
    folder = tmp_path / "x"
    folder.mkdir()
    (folder / "spec.yaml").write_text(ONE_GROUP)
    code, _, err = cli(folder, "spec.yaml", "--partition", "gpu")
    assert code == 2 and err.strip() == ("error: --partition is an option of the slurm "
                                         "launcher, not of local (add --launcher slurm)")
    assert not (folder / "registry").exists()  # refused before anything was written


def test_local_groups_spread_over_visible_gpus_only_when_it_helps(monkeypatch):
    from types import SimpleNamespace as NS

    from saerun.errors import SaerunError
    from saerun.launch.local import devices_to_spread
    from saerun.spec import LocalLauncher

    def plan(groups: int, device: str = "auto") -> NS:
        job = NS(config=NS(model=NS(device=device)))
        return NS(groups={i: [job] for i in range(groups)}, jobs=[job] * groups,
                  device_jobs=[NS(runs=[job]) for _ in range(groups)])

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    monkeypatch.delenv("SAERUN_LOCAL_CHILD", raising=False)
    every = LocalLauncher()
    assert devices_to_spread(every, plan(8)) == ["0", "1", "2", "3"]
    assert devices_to_spread(every, plan(3)) == ["0", "1", "2"]  # no idle process
    assert devices_to_spread(every, plan(1)) == []  # one group: in this process
    assert devices_to_spread(every, plan(8, "cuda:1")) == []  # a pinned device is obeyed
    assert devices_to_spread(LocalLauncher(gpus=[3]), plan(8)) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,5,6,7")
    assert devices_to_spread(LocalLauncher(gpus=[1, 3]), plan(8)) == ["5", "7"]
    with pytest.raises(SaerunError, match="asks for GPU 4, but 4 are visible"):
        devices_to_spread(LocalLauncher(gpus=[0, 4]), plan(8))
    monkeypatch.setenv("SAERUN_LOCAL_CHILD", "1")  # a per-GPU process never spreads again
    assert devices_to_spread(every, plan(8)) == []


def test_spread_workers_take_one_group_each_and_equal_the_in_process_run(tmp_path, cli,
                                                                        monkeypatch):
    # The reference first, in this process (the parent's fault module stays without delays).
    here = fresh(tmp_path, "here")
    assert cli(here, "spec.yaml", "--quiet")[0] == 0
    # As on a machine with two GPUs: one worker process per "GPU", each given the planned groups
    # as JSON (they train on the CPU). A slowed step keeps the first worker on its group long
    # enough for the second to start and take the other.
    spread = fresh(tmp_path, "spread")
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "device_count", lambda: 2)
        m.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        m.delenv("SAERUN_LOCAL_CHILD", raising=False)
        m.setenv("SAERUN_FAULT_DELAY", "train_step:0.4")
        code, out, err = cli(spread, "spec.yaml", "--quiet")
    assert code == 0, out + err
    ran = runs_of(spread)
    assert ran.keys() == runs_of(here).keys() and len(ran) == 2
    assert {r["status"] for r in ran.values()} == {"done"}
    assert len({r["group_key"] for r in ran.values()}) == 2
    devices = {json.loads(r["launcher"])["cuda_visible_devices"] for r in ran.values()}
    assert devices == {"0", "1"}  # each group by its own worker
    assert "trained here: " in out  # the parent's summary counts the workers' runs
    mine, theirs = weights(here), weights(spread)
    assert mine.keys() == theirs.keys()
    assert all(mine[r].keys() == theirs[r].keys()
               and all(mine[r][k].equal(theirs[r][k]) for k in mine[r]) for r in mine)


def test_a_spread_workers_user_error_stops_the_parent(tmp_path, capfd):
    from saerun.errors import SaerunError
    from saerun.launch import local
    from saerun.runner import prepare

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text('{"text": "a b c"}\n')
    folder = fresh(tmp_path, "x", SPEC.replace("data: {", f"data: {{dataset: {corpus}, "))
    plan = prepare(folder / "spec.yaml").plan
    with Registry(folder / "reg.db") as reg:
        spec_hash = reg.add_spec(plan.spec.name, "spec.yaml", SPEC)
        reg.ensure_runs(spec_hash, [{"run_id": j.run_id, "name": j.name, "group_key": j.group_key,
                                     "config": j.config.model_dump(mode="json")}
                                    for j in plan.jobs])
        corpus.unlink()  # gone between planning and training: each worker stops on it
        with pytest.raises(SaerunError, match="a per-GPU saerun process stopped on an error"):
            local.spread(reg, plan, ["0", "1"], {"kind": "local"}, retry_failed=False)
    assert f"error: dataset file not found: {corpus}" in capfd.readouterr().err


def test_the_launcher_is_never_part_of_a_run_id_and_an_extending_kind_replaces_it(tmp_path):
    from saerun.runner import prepare

    (tmp_path / "base.yaml").write_text(
        ONE_GROUP + "launcher: {kind: slurm, partition: gpu, time: 6h}\n")
    (tmp_path / "plain.yaml").write_text(ONE_GROUP)
    (tmp_path / "child.yaml").write_text("extends: base.yaml\nlauncher: {kind: local}\n")
    (tmp_path / "longer.yaml").write_text("extends: base.yaml\nlauncher: {time: 12h}\n")
    base, plain = prepare(tmp_path / "base.yaml"), prepare(tmp_path / "plain.yaml")
    assert [j.run_id for j in base.plan.jobs] == [j.run_id for j in plain.plan.jobs]
    assert base.spec.launcher.partition == "gpu" and plain.spec.launcher.kind == "local"
    assert prepare(tmp_path / "child.yaml").spec.launcher.kind == "local"
    longer = prepare(tmp_path / "longer.yaml").spec.launcher
    assert (longer.kind, longer.partition, longer.time) == ("slurm", "gpu", "12h")


def test_reserved_sbatch_options_are_refused():
    with pytest.raises(ValueError, match="saerun sets array itself"):
        SlurmLauncher(kind="slurm", sbatch={"array": "0-3"})


def test_a_jobs_result_files_are_ingested_once_and_only_from_that_job(tmp_path):
    from saerun.launch.results import RunFolders, clear_result, read_result, run_folder
    from saerun.launch.slurm import job_owner

    run_id = "abcd0123"
    with Registry(tmp_path / "saerun.db") as reg:
        spec_hash = reg.add_spec("s", "s.yaml", "name: s\n")
        reg.ensure_runs(spec_hash, [{"run_id": run_id, "name": "r", "group_key": "g",
                                     "config": {"seed": 0}}])
        assert reg.claim([run_id])[0] == [run_id]
        assert reg.record_launch([run_id], {"kind": "slurm"}, job_id="7_1", log_path="x.log",
                                 job_owner=job_owner("7_1"), lease_seconds=1e6) == [run_id]
        assert [f["job_id"] for f in reg.in_flight()] == ["7_1"]
        # Another process cannot take a run a job holds, whatever its lease says.
        assert reg.claim([run_id], owner="elsewhere:1:x")[1] == {run_id: job_owner("7_1")}

        # The job's side: no registry, files in the run folder.
        stale = RunFolders(tmp_path, {run_id: {"name": "r", "config": {}}}, job_id="3_0")
        stale.mark_failed(run_id, "an earlier attempt")
        folder = run_folder(tmp_path, run_id)
        assert read_result(folder, "7_1") is None  # another job's file is never taken
        clear_result(folder)
        sink = RunFolders(tmp_path, {run_id: {"name": "r", "config": {}}}, job_id="7_1")
        sink.mark_running(run_id, {"device": "cpu"}, "fp1")
        sink.add_curve(run_id, [{"step": 4, "loss": 2.0}, {"step": 8, "loss": 1.0}])
        sink.add_curve(run_id, [{"step": 8, "loss": 0.5}])  # a resumed job redoes step 8
        assert read_result(folder, "7_1") is None  # no result until the last write
        sink.mark_done(run_id, {"fvu": 0.25}, 3.0, 1.0, 4096)

        result = read_result(folder, "7_1")
        assert [p["loss"] for p in result["curve"]] == [2.0, 0.5]
        assert not reg.ingest(run_id, job_owner("9_9"), result)  # not that job's run
        assert reg.ingest(run_id, job_owner("7_1"), result)
        assert not reg.ingest(run_id, job_owner("7_1"), result)  # once
        run = reg.get_run(run_id)
        assert (run["status"], run["metrics"], run["data_fingerprint"]) == (
            "done", {"fvu": 0.25}, "fp1")
        assert run["environment"] == {"device": "cpu"} and run["owner"] is None
        assert [p["loss"] for p in reg.curve(run_id)] == [2.0, 0.5]
        assert reg.in_flight() == []


# -- a real cluster ----------------------------------------------------------------------------


def _installed() -> bool:
    return all(shutil.which(c) for c in ("slurmctld", "slurmd", "slurmdbd", "munged",
                                         "mariadbd", "sbatch"))


@pytest.fixture(scope="session")
def cluster():
    """SLURM_CONF of a running single-node cluster; started (and stopped) here if need be."""
    if os.geteuid() != 0:
        pytest.skip("the Slurm tests start slurmctld, slurmd, slurmdbd, munged and mariadbd: "
                    "they need root")
    env = {**os.environ, "SAERUN_SLURM_DIR": str(CLUSTER_DIR)}
    conf = str(CLUSTER_DIR / "etc" / "slurm.conf")
    if _installed() and subprocess.run(["bash", str(SCRIPT), "status"], env=env).returncode == 0:
        yield conf  # someone else's cluster: used, left running
        return
    if not _installed():
        if not shutil.which("apt-get"):
            pytest.skip("Slurm is not installed and there is no apt-get to install it "
                        "(slurm-wlm slurmctld slurmd slurmdbd munge mariadb-server)")
        install = subprocess.run(["bash", str(SCRIPT), "install"], env=env,
                                 capture_output=True, text=True)
        if install.returncode != 0 or not _installed():
            pytest.skip(f"could not install Slurm's packages: {install.stderr.strip()[-300:]}")
    start = subprocess.run(["bash", str(SCRIPT), "start"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert start.returncode == 0, start.stdout + start.stderr
    try:
        yield conf
    finally:
        subprocess.run(["bash", str(SCRIPT), "stop"], env=env, timeout=300)


@pytest.fixture
def slurm_env(cluster, monkeypatch):
    from saerun.launch import slurm

    monkeypatch.setenv("SLURM_CONF", cluster)
    monkeypatch.setenv("SAERUN_POLL_SECONDS", "0.5")  # drivers in subprocesses
    monkeypatch.setattr(slurm, "POLL_SECONDS", 0.5)  # and in this one
    monkeypatch.delenv("SAERUN_FAULT", raising=False)
    return cluster


@pytest.fixture
def cli(capsys, monkeypatch):
    """`saerun ARGS` in this process (no interpreter start-up): (exit code, stdout, stderr)."""
    from saerun.cli import main

    def run(folder: Path, *args: str) -> tuple[int, str, str]:
        monkeypatch.chdir(folder)
        capsys.readouterr()
        code = main(list(args))
        out, err = capsys.readouterr()
        return code, out, err

    return run


def saerun(folder: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=folder, timeout=timeout)


def fresh(tmp_path: Path, name: str, spec: str = SPEC) -> Path:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "spec.yaml").write_text(spec)
    return folder


def runs_of(folder: Path) -> dict[str, dict]:
    with Registry(folder / "registry" / "saerun.db") as reg:
        return {r["run_id"]: r for r in reg.list_runs()}


def weights(folder: Path) -> dict[str, dict]:
    root = folder / "registry" / "runs"
    return {d.name: load_file(d / "sae_weights.safetensors") for d in sorted(root.iterdir())}


def wait_until(condition, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.3)


def test_every_daemon_listens_on_loopback_only(slurm_env):
    if not shutil.which("ss"):
        pytest.skip("no `ss` here to list listening sockets")
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout.splitlines()
    names = ("slurmctld", "slurmd", "slurmdbd", "mariadbd", "munged")
    ours = {n: [line.split()[3] for line in lines if f'(("{n}"' in line] for n in names}
    assert all(ours[n] for n in ("slurmctld", "slurmd", "slurmdbd")), ours
    assert not ours["mariadbd"] and not ours["munged"]  # Unix sockets only
    assert all(addr.startswith("127.0.0.1:") for addrs in ours.values() for addr in addrs), ours


def test_a_sweep_is_one_job_array_and_equals_the_local_launcher(tmp_path, slurm_env, cli,
                                                                monkeypatch):
    slurm = fresh(tmp_path, "slurm")
    driver = subprocess.Popen([sys.executable, "-m", "saerun.cli", "spec.yaml", "--launcher",
                               "slurm", "--max-parallel", "2", "--time", "10m"], cwd=slurm,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # The reference, trained meanwhile by the local launcher as on a machine with two GPUs: one
    # process per "GPU", each taking the next group (here they train on the CPU).
    local = fresh(tmp_path, "local")
    with monkeypatch.context() as m:
        m.setattr(torch.cuda, "is_available", lambda: True)
        m.setattr(torch.cuda, "device_count", lambda: 2)
        assert cli(local, "spec.yaml", "--quiet")[0] == 0
    assert {json.loads(r["launcher"])["kind"] for r in runs_of(local).values()} == {"local"}
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, out + err
    assert "submitted 2 run(s) in 2 Slurm job(s)" in out
    runs = runs_of(slurm)
    assert len(runs) == 2 and {r["status"] for r in runs.values()} == {"done"}
    jobs = sorted(r["job_id"] for r in runs.values())
    array = jobs[0].split("_")[0]
    assert jobs == [f"{array}_0", f"{array}_1"]  # one array, one task per activation group
    for run in runs.values():
        launcher = json.loads(run["launcher"])
        assert launcher["kind"] == "slurm" and launcher["max_parallel"] == 2
        assert Path(run["log_path"]).is_file()
    with Registry(slurm / "registry" / "saerun.db") as reg:
        run = reg.get_run(next(iter(runs)))
        assert run["environment"]["device"] == "cpu" and run["data_fingerprint"]
        assert reg.curve(run["run_id"])  # the job's curve.json was ingested
    code, status, _ = cli(slurm, "status", "spec.yaml", "--json")
    assert code == 0 and [r["status"] for r in json.loads(status)] == ["done", "done"]

    a, b = weights(slurm), weights(local)
    assert a.keys() == b.keys() == runs.keys()  # same run ids
    assert all(a[r][k].equal(b[r][k]) for r in a for k in a[r])  # bit-identical weights

    code, again, _ = cli(slurm, "spec.yaml", "--launcher", "slurm", "--quiet")
    assert code == 0 and "already done" in again


def test_a_job_that_raises_fails_its_runs_with_the_reason_and_log(tmp_path, slurm_env, cli,
                                                                  monkeypatch):
    folder = fresh(tmp_path, "raises", ONE_GROUP)
    monkeypatch.setenv("SAERUN_FAULT", "job_raises")  # the job inherits the driver's environment
    code, out, _ = cli(folder, "spec.yaml", "--launcher", "slurm", "--quiet")
    monkeypatch.delenv("SAERUN_FAULT")
    assert code == 1, out
    (run,) = runs_of(folder).values()
    assert run["status"] == "failed"
    assert run["error"] == ("RuntimeError: injected failure (SAERUN_FAULT=job_raises) "
                            f"(Slurm job {run['job_id']}, log {run['log_path']})")
    assert "RuntimeError: injected failure" in Path(run["log_path"]).read_text()  # traceback
    assert f"failed {run['run_id'][:10]}" in out
    # Failed stays failed unless asked (--retry-failed submits it again: see the cancel test).
    assert cli(folder, "spec.yaml", "--launcher", "slurm", "--quiet")[0] == 0
    assert runs_of(folder)[run["run_id"]] == run


def test_a_cancelled_job_fails_its_runs_and_the_retry_resumes_bit_identically(tmp_path,
                                                                             slurm_env, cli,
                                                                             monkeypatch):
    longer = ONE_GROUP.replace("train_tokens: 4096", "train_tokens: 16384")  # 32 steps
    folder = fresh(tmp_path, "cancelled", longer)
    # The job (which inherits the driver's environment) sleeps 0.3 s per step, so the cancel
    # lands mid-training however fast the machine is; the retry below runs at full speed.
    monkeypatch.setenv("SAERUN_FAULT_DELAY", "train_step:0.3")
    code, out, _ = cli(folder, "spec.yaml", "--launcher", "slurm", "--no-wait")
    monkeypatch.delenv("SAERUN_FAULT_DELAY")
    assert code == 0 and "submitted 1 run(s) in 1 Slurm job(s)" in out
    (run,) = runs_of(folder).values()
    assert run["status"] == "running" and run["job_id"]
    code, status, _ = cli(folder, "status", "spec.yaml", "--json")
    assert code == 0
    assert [(r["status"], r["job_id"]) for r in json.loads(status)] in (
        [("queued", run["job_id"])], [("running", run["job_id"])])
    checkpoint = folder / "registry" / "runs" / run["run_id"] / "checkpoint.json"
    wait_until(checkpoint.exists)  # cancelled mid-training, after its first checkpoint
    subprocess.run(["scancel", run["job_id"]], check=True)
    code, out, _ = cli(folder, "collect", "spec.yaml", "--wait")
    assert code == 1 and "registered 1 run(s); no job is out" in out
    (after,) = runs_of(folder).values()
    assert after["status"] == "failed"
    assert after["error"].startswith(f"Slurm job {run['job_id']} ended CANCELLED (exit code ")
    assert after["error"].endswith(f") without a result; log {run['log_path']}")
    assert json.loads(checkpoint.read_text())["step"] < 32

    # --retry-failed submits it again; it resumes from the checkpoint and must end exactly as
    # an uninterrupted local run (trained here while the job runs).
    code, out, _ = cli(folder, "spec.yaml", "--launcher", "slurm", "--retry-failed", "--no-wait")
    assert code == 0 and "submitted 1 run(s)" in out
    local = fresh(tmp_path, "uninterrupted", longer)
    assert cli(local, "spec.yaml", "--quiet")[0] == 0
    assert cli(folder, "collect", "spec.yaml", "--wait")[0] == 0
    (retried,) = runs_of(folder).values()
    assert retried["status"] == "done" and retried["job_id"] != run["job_id"]
    a, b = weights(folder), weights(local)
    assert a.keys() == b.keys() and all(a[r][k].equal(b[r][k]) for r in a for k in a[r])


def test_a_driver_killed_mid_sweep_loses_and_duplicates_nothing(tmp_path, slurm_env, cli):
    # Two SAEs in one activation group: one job (two jobs would share this machine's 2 cores).
    folder = fresh(tmp_path, "killed", ONE_GROUP.replace("seeds: [0]", "seeds: [0, 1]"))
    driver = subprocess.Popen([sys.executable, "-m", "saerun.cli", "spec.yaml", "--launcher",
                               "slurm", "--quiet"], cwd=folder, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    db = folder / "registry" / "saerun.db"

    def submitted() -> bool:  # the runs registered (not an empty registry yet) and out
        runs = runs_of(folder).values() if db.exists() else []
        return len(runs) == 2 and all(r["job_id"] for r in runs)

    wait_until(submitted)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    jobs = {r: run["job_id"] for r, run in runs_of(folder).items()}
    assert len(jobs) == 2 and {r["status"] for r in runs_of(folder).values()} == {"running"}

    # A new driver submits nothing (both runs are out in live jobs) and returns at once.
    code, out, _ = cli(folder, "spec.yaml", "--launcher", "slurm", "--no-wait")
    assert code == 0 and "submitted" not in out and "already out in Slurm job" in out
    code, out, _ = cli(folder, "collect", "spec.yaml", "--wait")
    assert code == 0 and "registered 2 run(s); no job is out" in out
    runs = runs_of(folder)
    assert {r["status"] for r in runs.values()} == {"done"}
    assert {r: run["job_id"] for r, run in runs.items()} == jobs  # each run trained once
    code, out, _ = cli(folder, "collect", "--all")
    assert code == 0 and out.strip() == "registered 0 run(s); no job is out"


@pytest.mark.slow
def test_quickstart_on_slurm_equals_the_local_launcher(tmp_path, slurm_env):
    """The issue's acceptance check: the same run ids and bit-identical weights."""
    outs = {}
    for name, extra in (("slurm", ["--launcher", "slurm", "--time", "2h"]), ("local", [])):
        folder = tmp_path / name
        folder.mkdir()
        run = saerun(folder, str(REPO / "specs" / "quickstart.yaml"), "--quiet", *extra,
                     timeout=3600)
        assert run.returncode == 0, run.stdout + run.stderr
        outs[name] = weights(folder)
    a, b = outs["slurm"], outs["local"]
    assert a.keys() == b.keys() and len(a) == 6
    assert all(a[r][k].equal(b[r][k]) for r in a for k in a[r])


def test_a_job_past_max_requeues_fails_its_runs_with_that_reason(tmp_path, slurm_env, cli,
                                                                  monkeypatch):
    folder = fresh(tmp_path, "limit", ONE_GROUP + "launcher: {kind: slurm, max_requeues: 0}\n")
    monkeypatch.setenv("SAERUN_FAULT", "signal_at_start")  # the warning, at once, in the job
    code, out, _ = cli(folder, "spec.yaml", "--quiet")
    monkeypatch.delenv("SAERUN_FAULT")
    assert code == 1, out
    (run,) = runs_of(folder).values()
    assert run["status"] == "failed" and run["requeues"] == 0
    assert run["error"].startswith("cut off by the time limit 1 times: requeued 0 time(s), "
                                   "launcher.max_requeues = 0; raise launcher.time")
    saved = json.loads((folder / "registry" / "runs" / run["run_id"] / "checkpoint.json")
                       .read_text())
    assert saved["step"] == 1  # checkpointed at the first batch boundary after the signal
    assert "the time limit is near (SIGUSR2): checkpointed 1 run(s)" in Path(
        run["log_path"]).read_text()


@pytest.mark.slow
def test_a_one_minute_time_limit_requeues_and_ends_bit_identical(tmp_path, slurm_env, cli,
                                                                 monkeypatch):
    """Cut off by its time limit (a 1 s step, 32 steps, the warning 20 s before a 1-minute
    limit: on a loaded machine the start-up alone can take half a minute), the job
    checkpoints, requeues itself (the test cluster holds a requeued job ~15 s, its
    cred_expire) and resumes: the same weights as an uninterrupted local run."""
    longer = ONE_GROUP.replace("train_tokens: 4096", "train_tokens: 16384")
    folder = fresh(tmp_path, "requeued", longer + "launcher: {kind: slurm, time: 1m, "
                   "signal_seconds: 20, max_requeues: 20}\n")
    monkeypatch.setenv("SAERUN_FAULT_DELAY", "train_step:1.0")
    code, out, _ = cli(folder, "spec.yaml", "--no-wait")
    monkeypatch.delenv("SAERUN_FAULT_DELAY")
    assert code == 0 and "submitted 1 run(s)" in out
    local = fresh(tmp_path, "local", longer)
    assert cli(local, "spec.yaml", "--quiet")[0] == 0
    seen: set[str] = set()

    def requeued() -> bool:
        _, status, _ = cli(folder, "status", "spec.yaml", "--json")
        seen.update(r["status"] for r in json.loads(status))
        return "requeued" in seen

    wait_until(requeued, 300)
    assert cli(folder, "collect", "spec.yaml", "--wait")[0] == 0
    (run,) = runs_of(folder).values()
    assert run["status"] == "done" and run["requeues"] >= 1
    a, b = weights(folder), weights(local)
    assert a.keys() == b.keys() and all(a[r][k].equal(b[r][k]) for r in a for k in a[r])


@pytest.mark.slow
def test_quickstart_with_a_one_minute_limit_finishes_by_requeueing(tmp_path, slurm_env):
    """The issue's acceptance check: each job cut off at least once, the same run ids and
    bit-identical weights as the local launcher, the requeue counts in `saerun status`."""
    outs = {}
    for name in ("slurm", "local"):
        folder = tmp_path / name
        folder.mkdir()
        spec = folder / "spec.yaml"
        spec.write_text(f"extends: {REPO / 'specs' / 'quickstart.yaml'}\n" + (
            "launcher: {kind: slurm, time: 1m, max_requeues: 30}\n" if name == "slurm" else ""))
        run = saerun(folder, "spec.yaml", "--quiet", timeout=7200)
        assert run.returncode == 0, run.stdout + run.stderr
        outs[name] = weights(folder)
    runs = runs_of(tmp_path / "slurm")
    assert all(r["requeues"] >= 1 for r in runs.values())
    status = saerun(tmp_path / "slurm", "status", "spec.yaml")
    assert "requeues" in status.stdout
    # train_seconds adds up every attempt: as long as the uninterrupted run's, not the last
    # attempt's (5.6 s against 111 s before it did; a loose bound, the machine is shared).
    local = runs_of(tmp_path / "local")
    assert all(r["train_seconds"] > 0.5 * local[i]["train_seconds"] for i, r in runs.items())
    a, b = outs["slurm"], outs["local"]
    assert a.keys() == b.keys() and len(a) == 6
    assert all(a[r][k].equal(b[r][k]) for r in a for k in a[r])


SPLIT = SPEC.replace("d_sae: 128", "d_sae: 4096").replace(
    "train_tokens: 4096", "train_tokens: 16384").replace(
    "  grid: {data.shuffle_seed: [0, 1]}\n", "  seeds: [0, 1, 2]\n")


def test_killing_one_of_three_jobs_retrains_only_its_saes_from_their_checkpoints(
        tmp_path, slurm_env, cli, monkeypatch):
    """A budget-split group (--device-memory 0.1: three device jobs, one SAE each): one job
    SIGKILLed mid-training (node loss) loses only its work since its last checkpoint, never
    touches the other jobs' runs, and the rerun resumes it to the uninterrupted weights."""
    folder = fresh(tmp_path, "split", SPLIT)
    monkeypatch.setenv("SAERUN_FAULT_DELAY", "train_step:0.3")  # every job mid-training a while
    code, out, _ = cli(folder, "spec.yaml", "--launcher", "slurm", "--device-memory", "0.1",
                       "--no-wait")
    monkeypatch.delenv("SAERUN_FAULT_DELAY")
    assert code == 0 and "submitted 3 run(s) in 3 Slurm job(s)" in out
    runs = runs_of(folder)
    victim = next(r for r in runs.values() if r["job_id"].endswith("_1"))
    checkpoint = folder / "registry" / "runs" / victim["run_id"] / "checkpoint.json"
    wait_until(checkpoint.exists)
    subprocess.run(["scancel", "--signal=KILL", "--full", victim["job_id"]], check=True)
    local = fresh(tmp_path, "uninterrupted", SPLIT)  # the reference, meanwhile
    assert cli(local, "spec.yaml", "--quiet", "--device-memory", "0.1")[0] == 0
    assert cli(folder, "collect", "spec.yaml", "--wait")[0] == 1
    after = runs_of(folder)
    assert {r: a["status"] for r, a in after.items()} == {
        r: "failed" if r == victim["run_id"] else "done" for r in runs}
    step = json.loads(checkpoint.read_text())["step"]
    assert 0 < step < 32  # lost at most the steps since that checkpoint

    code, out, _ = cli(folder, "spec.yaml", "--launcher", "slurm", "--device-memory", "0.1",
                       "--retry-failed", "--quiet")
    assert code == 0 and f"trained here: {victim['run_id'][:10]}" in out
    final = runs_of(folder)
    assert {r["status"] for r in final.values()} == {"done"}
    for run_id, run in final.items():  # the other jobs' runs untouched
        if run_id != victim["run_id"]:
            assert (run["job_id"], run["finished_at"]) == (after[run_id]["job_id"],
                                                           after[run_id]["finished_at"])
    a, b = weights(folder), weights(local)
    assert a.keys() == b.keys() and all(a[r][k].equal(b[r][k]) for r in a for k in a[r])
