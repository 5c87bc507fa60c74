"""Batch stylization at studio scale: a job list (CSV or JSON lines), validated up front, run locally or on a
Ray cluster, resumable, with a summary and a contact sheet of every result.

jobs.py   the job list format: parsing, validation, backend inference, the job key used for resuming
runner.py running jobs (one `nst3d` subprocess each) locally or as Ray tasks; retries; summary; contact sheet
"""
