"""Mesh backend: load (trimesh / glTF) -> rasterize once (open3d G-buffer) -> texture pyramids -> export."""

from nst3d.backends.mesh.asset import MeshAsset
from nst3d.backends.mesh.backend import MeshBackend, frame_on_silhouette
from nst3d.backends.mesh.load import load_mesh

__all__ = ["MeshAsset", "MeshBackend", "frame_on_silhouette", "load_mesh"]
