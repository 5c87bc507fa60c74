"""The nerfstudio integration: the `nst3d-nerfacto` method (method.py, registered through the
`nerfstudio.method_configs` entry point), its model and pipeline (model.py, pipeline.py), and the
torchvision shim for CPU-only torch builds (tv_shim.py).

This package file imports nothing: nerfstudio imports plugin modules without guarding errors, and the
torchvision hook imports this package at every interpreter start-up.
"""
