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

from nst3d.batch.jobs import infer_backend, line_ranges, load_jobs
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
    while time.time() < deadline and not list(results.glob("*/job.json")):
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
    while time.time() < deadline and not list(results.glob("*/job.json")):
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

    from nst3d.batch.runner import LocalExecutor, run_batch

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
    for name in ("content.png", "style_swirl.png", "sample_scene.glb"):
        assert (scenes / name).read_bytes() == (tmp_path / name).read_bytes(), f"scenes/{name} is stale"
    jobs = load_jobs(scenes / "jobs.csv", [], build_parser())
    assert [(job.name, job.backend) for job in jobs] == [("scene", "mesh"), ("picture", "image")]
