"""nst3d: neural style transfer for 3D assets (meshes, Gaussian splats, NeRFs) and images."""

__version__ = "0.1.0"
