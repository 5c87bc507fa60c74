"""`nst3d batch`: the job list, validation, local and Ray execution, failures, kill and resume."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nst3d import __version__
from nst3d.batch.execute import execute_job
from nst3d.batch.executors import LocalExecutor, RayExecutor, ray_version_mismatch, visible_gpus
from nst3d.batch.jobs import infer_backend, line_ranges, load_jobs
from nst3d.batch.runner import run_batch
from nst3d.cli import build_parser
from nst3d.errors import UserError


@pytest.fixture()
def assets(tmp_path):
    """Three small images, a style, a corrupt file and a Gaussian-splat-looking PLY header."""
    rng = np.random.default_rng(0)
    for name in ("a", "b", "c"):
        Image.fromarray((rng.random((24, 24, 3)) * 255).astype(np.uint8)).save(tmp_path / f"{name}.png")
    Image.fromarray(((np.indices((24, 24)).sum(0) % 6 < 3) * 255).astype(np.uint8)).convert("RGB").save(
        tmp_path / "style.png")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG not really")
    return tmp_path


def write_csv(folder: Path, rows: list[str], header: str = "input,style,steps,name") -> Path:
    path = folder / "jobs.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def nst3d(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "nst3d", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


def test_rows_become_validated_jobs_with_stable_keys(assets, random_weights_file):
    jobs_csv = write_csv(assets, ["a.png,style.png,3,", "b.png,style.png,4,bee"])
    common = ["--size", "24", "--weights", str(random_weights_file)]
    jobs = load_jobs(jobs_csv, common, build_parser())
    assert [(j.line, j.name, j.backend) for j in jobs] == [(2, "a", "image"), (3, "bee", "image")]
    assert jobs[0].args[-2:] == ["--steps", "3"] and str(assets / "style.png") in jobs[0].args
    again = load_jobs(jobs_csv, common, build_parser())
    assert [j.key for j in again] == [j.key for j in jobs]
    other = load_jobs(jobs_csv, ["--size", "32", "--weights", str(random_weights_file)], build_parser())
    assert other[0].key != jobs[0].key
    Image.fromarray(np.zeros((24, 24, 3), np.uint8)).save(assets / "style.png")  # the style's content changed
    assert load_jobs(jobs_csv, common, build_parser())[0].key != jobs[0].key


def test_jsonl_rows_and_backend_inference(assets):
    path = assets / "jobs.jsonl"
    path.write_text(json.dumps({"input": "a.png", "style": ["style.png", "style.png"], "style_weights": [1, 2],
                                "size": 24}) + "\n")
    job = load_jobs(path, [], build_parser())[0]
    assert job.args.count("--style") == 2 and "--style-weights" in job.args
    splat = assets / "scene.ply"
    splat.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 0\nproperty float f_dc_0\n"
                      b"property float opacity\nproperty float scale_0\nend_header\n")
    mesh = assets / "mesh.ply"
    mesh.write_bytes(b"ply\nformat ascii 1.0\nelement vertex 0\nproperty float x\nend_header\n")
    assert infer_backend(splat) == "splat" and infer_backend(mesh) == "mesh"
    assert infer_backend(assets / "x.glb") == "mesh" and infer_backend(assets / "run" / "config.yml") == "nerf"
    with pytest.raises(UserError, match="cannot tell the backend"):
        infer_backend(assets / "notes.txt")


def test_every_bad_row_is_reported_with_its_line_before_anything_runs(assets, tmp_path):
    jobs_csv = write_csv(assets, ["a.png,style.png,3,", "missing.png,style.png,3,", "b.png,style.png,-1,",
                                  "c.png,style.png,3,"], header="input,style,steps,name")
    (assets / "jobs2.csv").write_text("input,style,wobble\na.png,style.png,1\n")
    with pytest.raises(UserError) as info:
        load_jobs(jobs_csv, [], build_parser())
    message = str(info.value)
    assert "2 bad row(s), nothing was run" in message
    assert "jobs.csv:3: input not found" in message and "jobs.csv:4:" in message and "--steps" in message
    with pytest.raises(UserError, match="jobs2.csv:2: unknown option column 'wobble'"):
        load_jobs(assets / "jobs2.csv", [], build_parser())
    r = nst3d("batch", jobs_csv, "-o", tmp_path / "results")
    assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "results").exists()
    no_style = write_csv(assets, ["a.png,nope.png,3,", "b.png,style.png;gone.png,3,"])
    with pytest.raises(UserError, match=r"2 bad row\(s\).*jobs.csv:2: style image not found: .*nope.png; "
                                        r"jobs.csv:3: style image not found: .*gone.png"):
        load_jobs(no_style, [], build_parser())
    with pytest.raises(UserError, match=r"^2 bad row\(s\), nothing was run: every row of jobs.csv: unrecognized "
                                        r"arguments: --stepz 3$"):  # a bad common option, said once
        load_jobs(no_style, ["--stepz", "3"], build_parser())
    assert line_ranges([2, 3, 4, 7, 9, 10]) == "2-4, 7, 9-10"
    binary = assets / "binary.csv"
    binary.write_bytes(b"input\n\xec\x9f\x00\xff\n")
    for job_list, pattern in ((binary, "not a text job list"), (assets / "a.png", "unsupported job list type")):
        r = nst3d("batch", job_list, "-o", tmp_path / "results")
        assert r.returncode == 2 and "Traceback" not in r.stderr and pattern in r.stderr, r.stderr


def test_local_batch_records_a_failure_and_resumes(assets, random_weights_file, tmp_path):
    jobs_csv = write_csv(assets, ["a.png,style.png,2,", "corrupt.png,style.png,2,", "b.png,style.png,2,"])
    results = tmp_path / "results"
    common = ["--size", "24", "--weights", random_weights_file, "--quiet"]
    r = nst3d("batch", jobs_csv, "-o", results, "--workers", 2, *common)
    assert r.returncode == 1, r.stderr  # one job failed, the others went on
    summary = json.loads((results / "summary.json").read_text())
    assert summary["counts"] == {"done": 2, "failed": 1}
    failed = [j for j in summary["jobs"] if j["status"] == "failed"][0]
    assert failed["line"] == 3 and "not a readable image" in failed["error"] and failed["attempts"] == 1
    done = [j for j in summary["jobs"] if j["status"] == "done"]
    assert all((Path(j["folder"]) / "job.json").is_file() for j in done)
    assert all(j["style_distance"]["after"] < j["style_distance"]["before"] for j in done)
    assert (results / "contact_sheet.png").is_file()
    assert not list(results.glob(".*"))  # no temporary folders left
    for record in results.glob("*/*.json"):  # job.json and each job's report name the final folder
        assert ".part" not in record.read_text() and str(record.parent) in record.read_text(), record
    r = nst3d("batch", jobs_csv, "-o", results, *common)
    summary = json.loads((results / "summary.json").read_text())
    assert summary["counts"] == {"skipped": 2, "failed": 1}


def test_a_killed_batch_loses_only_the_jobs_in_flight(assets, random_weights_file, tmp_path):
    jobs_csv = write_csv(assets, ["a.png,style.png,2,", "b.png,style.png,2,", "c.png,style.png,2,"])
    results = tmp_path / "results"
    command = [sys.executable, "-m", "nst3d", "batch", str(jobs_csv), "-o", str(results), "--workers", "1",
               "--size", "24", "--weights", str(random_weights_file), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not [p for p in results.glob("*/job.json") if not p.parent.name.startswith(".")]:
        time.sleep(0.2)
    assert list(results.glob("*/job.json")), "the first job never finished"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its job subprocess, mid-batch
    proc.wait()
    finished_before = {p.parent.name for p in results.glob("*/job.json")}
    assert 1 <= len(finished_before) < 3
    assert all((results / name / "a_styled.png").exists() or (results / name / "b_styled.png").exists()
               or (results / name / "c_styled.png").exists() for name in finished_before)
    r = nst3d("batch", jobs_csv, "-o", results, "--size", 24, "--weights", random_weights_file, "--quiet")
    assert r.returncode == 0, r.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert summary["counts"].get("skipped", 0) == len(finished_before)
    assert summary["counts"].get("done", 0) == 3 - len(finished_before)
    assert not list(results.glob(".*.part"))


def test_ctrl_c_keeps_the_finished_jobs_and_says_so(assets, random_weights_file, tmp_path):
    jobs_csv = write_csv(assets, ["a.png,style.png,2,", "b.png,style.png,2000,", "c.png,style.png,2,"])
    results = tmp_path / "results"
    command = [sys.executable, "-m", "nst3d", "batch", str(jobs_csv), "-o", str(results), "--workers", "1",
               "--size", "24", "--weights", str(random_weights_file), "--quiet"]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not [p for p in results.glob("*/job.json") if not p.parent.name.startswith(".")]:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in a terminal reaches the driver and its job alike
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err
    assert "finished jobs and summary.json are kept" in err and "nothing was written" not in err, err
    summary = json.loads((results / "summary.json").read_text())
    assert summary["counts"].get("done") == 1 and summary["counts"].get("interrupted")


@pytest.mark.slow
def test_ray_local_runs_images_a_mesh_and_a_splat(assets, random_weights_file, tmp_path):
    pytest.importorskip("ray")
    from nst3d.backends.splat.ply import save_gaussians
    from tests.mesh_data import two_object_glb
    from tests.test_splat_backend import ball

    two_object_glb(assets / "scene.glb")
    save_gaussians(assets / "ball.ply", **ball(400))
    jobs_csv = write_csv(assets, ["a.png,style.png,2,", "corrupt.png,style.png,2,", "scene.glb,style.png,2,",
                                  "ball.ply,style.png,2,"])
    results = tmp_path / "results"
    r = nst3d("batch", jobs_csv, "-o", results, "--ray", "local", "--size", 24, "--views", 1,
              "--weights", random_weights_file, "--quiet")
    assert r.returncode == 1 and (results / "summary.json").is_file(), r.stderr
    summary = json.loads((results / "summary.json").read_text())
    assert summary["executor"].startswith("ray (local)")
    assert summary["counts"] == {"done": 3, "failed": 1}
    done = {Path(j["input"]).name: Path(j["folder"]) for j in summary["jobs"] if j["status"] == "done"}
    assert (done["scene.glb"] / "scene_styled.glb").is_file()
    assert list(done["ball.ply"].glob("*.ply"))
    assert (results / "contact_sheet.png").is_file()


def test_a_lost_worker_is_retried_and_bad_input_is_not(assets, random_weights_file, tmp_path):
    from concurrent.futures import Future


    class FlakyWorkers(LocalExecutor):
        """Real local execution, except that the first attempt of every job loses its worker."""

        def __init__(self, root):
            super().__init__(root, workers=1)
            self.attempts: dict[str, int] = {}

        def submit(self, job):
            self.attempts[job.name] = self.attempts.get(job.name, 0) + 1
            if self.attempts[job.name] == 1:
                lost: Future = Future()
                lost.set_exception(ConnectionError("worker node died"))
                return lost
            return super().submit(job)

    jobs_csv = write_csv(assets, ["a.png,style.png,2,", "corrupt.png,style.png,2,"])
    jobs = load_jobs(jobs_csv, ["--size", "24", "--weights", str(random_weights_file)], build_parser())
    results = tmp_path / "results"
    results.mkdir()
    executor = FlakyWorkers(results)
    summary = run_batch(jobs, results, executor, retries=2)
    by_name = {j["name"]: j for j in summary["jobs"]}
    assert by_name["a"]["status"] == "done" and by_name["a"]["attempts"] == 2
    assert by_name["corrupt"]["status"] == "failed" and by_name["corrupt"]["attempts"] == 2  # lost once, then bad
    assert executor.attempts == {"a": 2, "corrupt": 2}


def test_the_scenes_folder_holds_what_the_generators_make_and_a_valid_job_list(tmp_path):
    from nst3d.sample_scene import write_sample_scene
    from nst3d.samples import write_samples

    scenes = Path(__file__).resolve().parents[1] / "scenes"
    write_samples(tmp_path)
    write_sample_scene(tmp_path / "sample_scene.glb")
    assert (scenes / "sample_scene.glb").read_bytes() == (tmp_path / "sample_scene.glb").read_bytes(), \
        "scenes/sample_scene.glb is stale"
    for name in ("content.png", "style_swirl.png"):
        # Pixels, not bytes: another numpy/torch (the Python 3.12 job) rounds a few float values at .5 the other
        # way (style_swirl.png: 1 level, on 0.003% of its values); a stale picture differs everywhere.
        committed = np.asarray(Image.open(scenes / name)).astype(int)
        made = np.asarray(Image.open(tmp_path / name)).astype(int)
        assert committed.shape == made.shape, f"scenes/{name} is stale"
        assert np.abs(committed - made).max() <= 1 and (committed != made).mean() < 1e-3, f"scenes/{name} is stale"
    jobs = load_jobs(scenes / "jobs.csv", [], build_parser())
    assert [(job.name, job.backend) for job in jobs] == [("scene", "mesh"), ("picture", "image")]


LAUNCHER = '''"""Starts a batch job the way the runner does (python -m nst3d ARGS), first noting what it was given.

argv: LOG ARGS. Appends {"input", "cuda", "pid"} to LOG. An input named hang*.png stands for a job that hangs: it
starts a child that sleeps, writes half of its output and sleeps too. One named oom*.png runs nst3d with 2 GB of
address space beyond its imports, so that a large --size really runs out of memory.
"""
import json, os, resource, subprocess, sys, time

log, *args = sys.argv[1:]
name = os.path.basename(args[1])
note = {"input": name, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
if name.startswith("hang"):
    note["child"] = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"]).pid
    with open(args[args.index("-o") + 1], "w") as half:
        half.write("half")
with open(log, "a") as f:
    f.write(json.dumps(note) + "\\n")
if name.startswith("hang"):
    time.sleep(600)
if name.startswith("oom"):
    # Import first, then allow 2 GB more address space than the imports mapped (a CUDA build of torch maps
    # several GB of libraries even on a CPU), and run nst3d in this process.
    from nst3d.cli import build_parser, main
    build_parser()  # imports torch and every command
    with open("/proc/self/status") as status:
        mapped = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (mapped + (2 << 30), mapped + (2 << 30)))
    sys.exit(main(args))
os.execv(sys.executable, [sys.executable, "-m", "nst3d", *args])
'''


@pytest.fixture()
def launcher(assets):
    """(program, log): a job program for the executors that runs the real nst3d after noting each job's
    environment in log, plus hang.png and oom.png inputs (copies of a.png) for the jobs it treats specially."""
    script = assets / "launch_job.py"
    script.write_text(LAUNCHER)
    for name in ("hang", "oom"):
        (assets / f"{name}.png").write_bytes((assets / "a.png").read_bytes())
    log = assets / "launched.jsonl"
    return [sys.executable, str(script), str(log)], log


def launched(log: Path) -> list[dict]:
    """What the launcher noted, one entry per job attempt."""
    return [json.loads(line) for line in log.read_text().splitlines()] if log.is_file() else []


def running(pid: int) -> bool:
    """True while process pid exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


def test_jobs_get_gpus_from_the_parents_own_list():
    assert visible_gpus("2,3", 2) == ["2", "3"]
    assert visible_gpus(None, 2) == ["0", "1"] and visible_gpus(None, 0) == []
    assert visible_gpus("", 4) == [] and visible_gpus(" ", 4) == []  # set but empty: no GPU
    uuids = "GPU-8f6a1c2e-0b1d-4c3e-9f00-1234567890ab, MIG-GPU-8f6a1c2e-0b1d-4c3e-9f00-1234567890ab/1/0"
    assert visible_gpus(uuids, 2) == ["GPU-8f6a1c2e-0b1d-4c3e-9f00-1234567890ab",
                                      "MIG-GPU-8f6a1c2e-0b1d-4c3e-9f00-1234567890ab/1/0"]
    assert visible_gpus("MIG-4b0f3c5d-6e7f-5a8b-9c0d-ef1234567890", 1) == ["MIG-4b0f3c5d-6e7f-5a8b-9c0d-ef1234567890"]
    assert visible_gpus("1,-1,0", 2) == ["1"]  # CUDA ignores everything from an invalid index on
    assert visible_gpus("0,1,7", 2) == ["0", "1"]  # 7 does not exist: torch sees 2


@pytest.mark.slow
def test_local_jobs_use_the_parents_gpus_out_of_memory_is_kept_and_a_hung_job_is_stopped(
        assets, random_weights_file, tmp_path, launcher, monkeypatch):
    program, log = launcher
    # oom.png at 1536 px passes nst3d's free-memory check (about 4 GB) but not the launcher's 2 GB limit
    jobs_csv = write_csv(assets, ["hang.png,style.png,2,", "a.png,style.png,2,", "oom.png,style.png,2,1536"],
                         header="input,style,steps,size")
    jobs = load_jobs(jobs_csv, ["--size", "24", "--weights", str(random_weights_file)], build_parser())
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")  # this machine's batch may use GPUs 2 and 3 only
    results = tmp_path / "results"
    results.mkdir()
    timeout = 45.0  # above what a 2-step job takes on a busy 2-core machine
    executor = LocalExecutor(results, workers=2, gpus=visible_gpus(os.environ["CUDA_VISIBLE_DEVICES"], 2),
                             timeout=timeout, program=program)
    started = time.perf_counter()
    summary = run_batch(jobs, results, executor, retries=2)
    seconds = time.perf_counter() - started
    by_name = {j["name"]: j for j in summary["jobs"]}
    notes = launched(log)
    assert sorted(n["input"] for n in notes) == ["a.png", "hang.png", "oom.png"]  # each ran once: none retried
    assert {n["cuda"] for n in notes} == {"2", "3"}  # two at once, each on one of the parent's GPUs
    assert by_name["a"]["status"] == "done" and by_name["a"]["device"] == "cpu"  # no CUDA here: torch ran on CPU
    oom = by_name["oom"]
    assert oom["status"] == "out of memory" and oom["attempts"] == 1 and oom["returncode"] == 3
    assert "out of memory" in oom["error"] and "not retried" in oom["hint"] and "size" in oom["hint"]
    hang = by_name["hang"]
    assert hang["status"] == "timed out" and hang["attempts"] == 1 and "45 s" in hang["error"]
    assert timeout <= hang["seconds"] < timeout + 15 and seconds < timeout + 60
    note = next(n for n in notes if n["input"] == "hang.png")
    assert not running(note["pid"]) and not running(note["child"])  # the job and the child it started
    assert summary["counts"] == {"timed out": 1, "done": 1, "out of memory": 1}
    assert sorted(p.name for p in results.iterdir()) == sorted([Path(by_name["a"]["folder"]).name, "summary.json"])


def test_cli_job_timeout_stops_a_long_job_and_retries_it_only_when_asked(assets, random_weights_file, tmp_path):
    jobs_csv = write_csv(assets, ["a.png,style.png,100000,"])
    results = tmp_path / "results"
    common = ["--size", 24, "--weights", random_weights_file]
    r = nst3d("batch", jobs_csv, "-o", results, "--job-timeout", 0, *common)
    assert r.returncode == 2 and "--job-timeout must be a positive number" in r.stderr and not results.exists()
    r = nst3d("batch", jobs_csv, "-o", results, "--job-timeout", 2, "--retry-timeouts", "--retries", 1, *common)
    assert r.returncode == 1 and "1 timed out" in r.stdout, r.stderr
    assert "line 2 (a): timed out: still running after the job timeout (2 s)" in r.stderr
    job = json.loads((results / "summary.json").read_text())["jobs"][0]
    assert job["status"] == "timed out" and job["attempts"] == 2 and job["folder"] is None
    assert sorted(p.name for p in results.iterdir()) == ["contact_sheet.png", "summary.json"]  # no job folder


def test_version_mismatches_say_what_each_side_runs(assets, tmp_path):
    import platform

    ray_utils = pytest.importorskip("ray._private.utils")
    import ray

    with pytest.raises(RuntimeError) as info:  # Ray's own check, given a cluster of other versions
        ray_utils.check_version_info({"ray_version": "2.9.3", "python_version": "3.10.12"}, "node 10.0.0.7")
    message = ray_version_mismatch(str(info.value), "ray://head:10001")
    assert message.startswith("the Ray cluster at 'ray://head:10001' runs Ray 2.9.3 on Python 3.10.12, but this "
                              f"driver runs Ray {ray.__version__} on Python {platform.python_version()}; ")
    assert "pip install 'ray==2.9.3'" in message and "\n" not in message
    job = load_jobs(write_csv(assets, ["a.png,style.png,2,"]), [], build_parser())[0]
    results = tmp_path / "results"
    results.mkdir()
    outcome = execute_job(job.to_dict(), str(results), driver_version="0.0.1")
    assert outcome["status"] == "failed" and not outcome["transient"]
    assert f"runs nst3d {__version__} but the driver runs nst3d 0.0.1" in outcome["error"]
    assert not list(results.iterdir())


@pytest.mark.slow
def test_ray_jobs_see_only_the_gpus_they_asked_for_and_a_cluster_of_other_versions_is_named(
        assets, random_weights_file, tmp_path, launcher, monkeypatch):
    ray = pytest.importorskip("ray")
    from ray._common.usage.usage_constants import CLUSTER_METADATA_KEY
    from ray._private.ray_constants import KV_NAMESPACE_CLUSTER
    from ray.experimental.internal_kv import _internal_kv_put

    program, log = launcher
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # the node's processes inherit this: "every GPU"
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        address = ray.get_runtime_context().gcs_address
        common = ["--size", "24", "--weights", str(random_weights_file)]
        jobs = {job.name: job for job in load_jobs(write_csv(assets, [f"{name}.png,style.png,2," for name in
                                                                      ("a", "b", "c", "hang")]), common,
                                                   build_parser())}
        results = tmp_path / "results"
        results.mkdir()
        cpu_only = RayExecutor(results, address, cpus=1, gpus=0, program=program)
        assert cpu_only.description.endswith("1 CPU / 0 GPU per job")
        summary = run_batch([jobs["a"]], results, cpu_only)
        assert summary["jobs"][0]["status"] == "done" and summary["jobs"][0]["device"] == "cpu"
        half = RayExecutor(results, address, cpus=1, gpus=0.5, program=program)
        summary = run_batch([jobs["b"], jobs["c"]], results, half)
        assert [j["status"] for j in summary["jobs"]] == ["done", "done"]
        timed = RayExecutor(results, address, cpus=1, gpus=0.5, timeout=3, program=program)
        hang = run_batch([jobs["hang"]], results, timed)["jobs"][0]
        assert hang["status"] == "timed out" and hang["attempts"] == 1 and 3 <= hang["seconds"] < 20
        notes = {n["input"]: n for n in launched(log)}
        assert notes["a.png"]["cuda"] == ""  # asked for no GPU: sees none
        assert {notes[name]["cuda"] for name in ("b.png", "c.png", "hang.png")} <= {"0", "1"}  # Ray's half GPU
        assert not running(notes["hang.png"]["pid"]) and not running(notes["hang.png"]["child"])
        assert not list(results.glob(".*"))
        # The cluster now says it runs other versions: a driver joining it is told what each side runs.
        metadata = {"ray_version": "2.9.3", "python_version": "3.10.12"}
        _internal_kv_put(CLUSTER_METADATA_KEY, json.dumps(metadata), overwrite=True, namespace=KV_NAMESPACE_CLUSTER)
        r = nst3d("batch", assets / "jobs.csv", "-o", tmp_path / "joined", "--ray", address, *common)
        assert r.returncode == 2 and "Traceback" not in r.stderr and not (tmp_path / "joined").exists(), r.stderr
        assert f"the Ray cluster at '{address}' runs Ray 2.9.3 on Python 3.10.12, but this driver runs Ray " \
               f"{ray.__version__}" in r.stderr
    finally:
        ray.shutdown()


@pytest.mark.gpu
def test_local_batch_on_cuda_gives_each_job_one_of_this_processs_gpus(assets, random_weights_file, tmp_path,
                                                                      launcher):
    import torch

    program, log = launcher
    gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), torch.cuda.device_count())
    jobs = load_jobs(write_csv(assets, ["a.png,style.png,4,", "b.png,style.png,4,"]),
                     ["--size", "32", "--weights", str(random_weights_file)], build_parser())
    on_cuda, on_cpu = tmp_path / "cuda", tmp_path / "cpu"
    on_cuda.mkdir()
    on_cpu.mkdir()
    cuda = run_batch(jobs, on_cuda, LocalExecutor(on_cuda, program=program))  # this process's own GPU list
    cpu = run_batch(jobs, on_cpu, LocalExecutor(on_cpu, gpus=[], program=program))
    notes = launched(log)
    assert gpus and all(n["cuda"] in gpus for n in notes[:2])  # one GPU each, from this process's list
    assert [n["cuda"] for n in notes[2:]] == ["", ""]
    for on_gpu, on_host in zip(cuda["jobs"], cpu["jobs"], strict=True):
        assert on_gpu["status"] == on_host["status"] == "done"
        assert on_gpu["device"].startswith("cuda") and on_host["device"] == "cpu"
        before_gpu, before_cpu = on_gpu["style_distance"]["before"], on_host["style_distance"]["before"]
        assert abs(before_gpu - before_cpu) <= 1e-2 * before_cpu  # the same start on either device (TF32 convs)
        assert on_gpu["style_distance"]["after"] < before_gpu


@pytest.mark.gpu
@pytest.mark.slow
def test_ray_batch_shares_a_gpu_between_fractional_jobs_and_keeps_cpu_jobs_off_it(assets, random_weights_file,
                                                                                  tmp_path, launcher):
    ray = pytest.importorskip("ray")
    program, log = launcher
    jobs = load_jobs(write_csv(assets, ["a.png,style.png,4,", "b.png,style.png,4,", "c.png,style.png,4,"]),
                     ["--size", "32", "--weights", str(random_weights_file)], build_parser())
    results = tmp_path / "results"
    results.mkdir()
    ray.init(num_cpus=3, include_dashboard=False, log_to_driver=False, configure_logging=False)  # the real GPUs
    try:
        address = ray.get_runtime_context().gcs_address
        shared = run_batch(jobs[:2], results, RayExecutor(results, address, cpus=1, gpus=0.5, program=program))
        cpu_only = run_batch(jobs[2:], results, RayExecutor(results, address, cpus=1, gpus=0, program=program))
    finally:
        ray.shutdown()
    assert all(j["status"] == "done" and j["device"].startswith("cuda") for j in shared["jobs"])
    assert cpu_only["jobs"][0]["status"] == "done" and cpu_only["jobs"][0]["device"] == "cpu"
    notes = {n["input"]: n["cuda"] for n in launched(log)}
    assert notes["a.png"] and notes["b.png"] and notes["c.png"] == ""
