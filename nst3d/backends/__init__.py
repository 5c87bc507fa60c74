"""Backends: each owns one representation (image, mesh, splat, NeRF), its renderer, loader and exporter.

The stylization loop (nst3d.stylize) only knows the small protocol in nst3d.backends.base.
"""
