"""Where jobs run: a local thread pool (one job per GPU, or per CPU share) or Ray tasks, each calling
execute_job. Both hand a job exactly the GPUs it was given: the local pool one entry of this process's own
CUDA_VISIBLE_DEVICES at a time, Ray the ones it assigned (none for a job that asked for no GPU).
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import queue
import re
from pathlib import Path
from typing import Any

from nst3d import __version__
from nst3d.batch.execute import JobProcesses, execute_job
from nst3d.batch.jobs import Job
from nst3d.errors import UserError

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # a job that was given no GPU sees none, and runs on the CPU


def visible_gpus(value: str | None, device_count: int) -> list[str]:
    """The GPUs this process may hand to jobs, each as a CUDA_VISIBLE_DEVICES entry for one job.

    value: this process's CUDA_VISIBLE_DEVICES (None when unset); device_count: how many CUDA devices it sees.
    Unset: "0".."count-1". Set: its own entries in order (indices, GPU-UUIDs or MIG-UUIDs, kept as written), cut,
    as CUDA does, at the first invalid (negative) index and to the devices actually seen. Set but empty: none.
    """
    if value is None:
        return [str(index) for index in range(device_count)]
    entries = []
    for entry in (item.strip() for item in value.split(",")):
        if not entry or re.fullmatch(r"-\d+", entry):
            break
        entries.append(entry)
    return entries[:device_count]


def _cuda_device_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


class LocalExecutor:
    """Threads that each run one job subprocess at a time; GPUs are handed out one per running job.

    gpus: the CUDA_VISIBLE_DEVICES entries to hand out (default: visible_gpus() of this process); an empty list
    runs every job on the CPU. timeout: seconds a job may run (None: no limit). program: see execute_job.
    """

    def __init__(self, root: Path, workers: int | None = None, gpus: list[str] | None = None,
                 timeout: float | None = None, program: list[str] | None = None):
        if gpus is None:
            gpus = visible_gpus(os.environ.get("CUDA_VISIBLE_DEVICES"), _cuda_device_count())
        self.workers = workers or max(1, len(gpus))
        self.gpus: queue.Queue[str] = queue.Queue()
        for gpu in gpus:
            self.gpus.put(gpu)
        self.has_gpus = bool(gpus)
        self.threads_per_job = max(1, (os.cpu_count() or 1) // self.workers)
        self.root, self.timeout, self.program = root, timeout, program
        self.pool = cf.ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="nst3d-job")
        self.processes = JobProcesses()
        self.description = (f"local, {self.workers} worker(s), "
                            + (f"GPU(s) {','.join(gpus)}" if gpus else "CPU"))

    def _run(self, job: Job) -> dict[str, Any]:
        env = {"OMP_NUM_THREADS": str(self.threads_per_job), "MKL_NUM_THREADS": str(self.threads_per_job)}
        if not self.has_gpus:
            return self._execute(job, {**env, **NO_GPU})
        gpu = self.gpus.get()
        try:
            return self._execute(job, {**env, "CUDA_VISIBLE_DEVICES": gpu})
        finally:
            self.gpus.put(gpu)

    def _execute(self, job: Job, env: dict[str, str]) -> dict[str, Any]:
        return execute_job(job.to_dict(), str(self.root), env, self.processes, self.timeout, self.program)

    def submit(self, job: Job) -> cf.Future:
        return self.pool.submit(self._run, job)

    def cancel_all(self) -> None:
        self.processes.stop_all()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


class RayExecutor:
    """One Ray task per job, asking for `cpus` CPUs and `gpus` GPUs (default: 1 if the cluster has any; a fraction
    such as 0.5 shares a GPU). A job given no GPU gets CUDA_VISIBLE_DEVICES="" (Ray leaves the node's own list
    for such tasks). A job past `timeout` seconds is stopped inside its task, the same way as locally.
    """

    def __init__(self, root: Path, address: str, cpus: float = 1.0, gpus: float | None = None,
                 timeout: float | None = None, program: list[str] | None = None):
        try:
            import ray
        except ImportError:
            raise UserError("--ray needs Ray: pip install 'ray>=2.9' (or nst3d[batch])") from None
        self.ray = ray
        self.started_here = address == "local"
        try:
            # address "local" always starts a new instance (never joins one that happens to be running).
            ray.init(address=address, include_dashboard=False,
                     log_to_driver=False, ignore_reinit_error=True, configure_logging=False)
        except ConnectionError as exc:
            raise UserError(f"cannot reach the Ray cluster at '{address}': {exc}; start one with `ray start "
                            "--head` or use --ray local") from None
        except RuntimeError as exc:
            if "Version mismatch" not in str(exc):
                raise
            raise UserError(ray_version_mismatch(str(exc), address)) from None
        resources = ray.cluster_resources()
        if gpus is None:
            gpus = 1.0 if resources.get("GPU", 0) > 0 else 0.0
        self.env = NO_GPU if gpus == 0 else None
        options: dict[str, Any] = {"num_cpus": cpus, "num_gpus": gpus, "max_retries": 0}
        if gpus == 0:
            options["runtime_env"] = {"env_vars": NO_GPU}
        self.remote = ray.remote(execute_job).options(**options)
        self.root, self.timeout, self.program = root, timeout, program
        self.refs: dict[cf.Future, Any] = {}
        self.description = (f"ray ({'local' if self.started_here else address}), {resources.get('CPU', 0):g} CPUs, "
                            f"{resources.get('GPU', 0):g} GPUs; {cpus:g} CPU / {gpus:g} GPU per job")

    def submit(self, job: Job) -> cf.Future:
        ref = self.remote.remote(job.to_dict(), str(self.root), self.env, None, self.timeout, self.program,
                                 __version__)
        future = ref.future()
        self.refs[future] = ref
        return future

    def cancel_all(self) -> None:
        for ref in self.refs.values():
            self.ray.cancel(ref, force=True)

    def shutdown(self) -> None:
        if self.started_here:
            self.ray.shutdown()


def ray_version_mismatch(message: str, address: str) -> str:
    """One line from Ray's "Version mismatch" error: what the cluster runs, what this driver runs, what to do."""
    found = re.findall(r"Ray: (\S+)\s+Python: (\S+)", message)
    if len(found) < 2:
        return f"the Ray cluster at '{address}' runs other versions than this driver: {' '.join(message.split())}"
    (cluster_ray, cluster_python), (driver_ray, driver_python) = found[:2]
    return (f"the Ray cluster at '{address}' runs Ray {cluster_ray} on Python {cluster_python}, but this driver "
            f"runs Ray {driver_ray} on Python {driver_python}; run nst3d batch from an environment with the "
            f"cluster's versions (Python {cluster_python}, pip install 'ray=={cluster_ray}') or restart the cluster "
            "with this one's")
