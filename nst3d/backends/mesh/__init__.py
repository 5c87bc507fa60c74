"""Mesh backend: load (trimesh / glTF) -> rasterize once (open3d G-buffer) -> texture pyramids -> export."""

from nst3d.backends.mesh.asset import MeshAsset
from nst3d.backends.mesh.backend import MeshBackend
from nst3d.backends.mesh.load import load_mesh
from nst3d.backends.mesh.render import frame_on_silhouette

__all__ = ["MeshAsset", "MeshBackend", "frame_on_silhouette", "load_mesh"]
