"""Batch stylization at studio scale: a job list (CSV or JSON lines), validated up front, run locally or on a
Ray cluster, resumable, with a summary and a contact sheet of every result.

jobs.py       the job list format: parsing, validation, backend inference, the job key used for resuming
execute.py    one job: an `nst3d` subprocess in its own process group, its timeout, how it ended
executors.py  where jobs run: local threads (one per GPU of this process's own list) or Ray tasks
runner.py     the batch: skipping finished jobs, retries, summary, contact sheet
"""
