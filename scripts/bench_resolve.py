"""The mesh step's texel-to-pixel resolve, side by side in one run on one device: the library's sparse CSR products
(`nst3d.backends.mesh.resolve`: cuSPARSE on CUDA, MKL/native on the CPU) against two candidate formulations of the
same linear map, on a real training batch (Spot with its texture from ../shared/assets, else the built-in sample
scene, or --mesh; at --size, 4 views):

- gather: pixels = index_add over the matrix's entries of value x texel row (backward: the same with rows and
  columns swapped), no sparse library;
- spmv: one sparse matrix-vector product per colour channel instead of one sparse x [T, 3] product.

Each is timed forward and backward (the best of --reps after a warm-up, synchronised), checked equal to the library's
result, and printed with the batch's sizes (pixels P, texels T, entries) as one Markdown table. Why it exists: on an
H200 the sparse products took 70 % of a 512 px Spot step's GPU time (BENCHMARKS.md, "Second GPU run"), and a GPU
session has minutes, so the comparison is ready to run there:

    python scripts/bench_resolve.py --device cuda --size 512
    python scripts/bench_resolve.py --device cpu --size 128 --reps 3      # here: a minute, numbers for the CPU
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]  # this nst3d first
from bench_splat import timed  # noqa: E402  (best wall time over calls, synchronised on CUDA)

from nst3d.backends.mesh.backend import MeshBackend  # noqa: E402
from nst3d.backends.mesh.gbuffer import mip_chain  # noqa: E402
from nst3d.backends.mesh.load import load_mesh  # noqa: E402
from nst3d.backends.mesh.resolve import SampleMatrix, resolve, stacked  # noqa: E402
from nst3d.sample_scene import write_sample_scene  # noqa: E402

SPOT = Path(__file__).resolve().parents[2] / "shared" / "assets" / "meshes" / "spot"


def entries(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A CSR matrix's (row [N], column [N], value [N]) with int64 indices."""
    crow = matrix.crow_indices().long()
    rows = torch.repeat_interleave(torch.arange(len(crow) - 1, device=crow.device), crow.diff())
    return rows, matrix.col_indices().long(), matrix.values()


def gather_product(rows: torch.Tensor, cols: torch.Tensor, values: torch.Tensor, dense: torch.Tensor,
                   out_rows: int) -> torch.Tensor:
    """sum over entries k of values[k] * dense[cols[k]] into row rows[k]: [out_rows, C]."""
    return dense.new_zeros(out_rows, dense.shape[1]).index_add_(0, rows, dense[cols] * values[:, None])


def spmv_product(matrix: torch.Tensor, dense: torch.Tensor) -> torch.Tensor:
    """matrix @ dense one column at a time: [rows, C]."""
    return torch.stack([matrix @ dense[:, c].contiguous() for c in range(dense.shape[1])], dim=1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--mesh", type=Path, default=None, help="default: Spot if ../shared has it, else the "
                        "built-in sample scene")
    parser.add_argument("--texture", type=Path, default=None, help="default: Spot's, with Spot")
    parser.add_argument("--reps", type=int, default=10)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.mesh is None and (SPOT / "spot_triangulated.obj").is_file():
        args.mesh, args.texture = SPOT / "spot_triangulated.obj", args.texture or SPOT / "spot_texture.png"
    elif args.mesh is None:
        args.mesh = write_sample_scene(Path(tempfile.mkdtemp()) / "sample_scene.glb")

    backend = MeshBackend(load_mesh(args.mesh, texture=args.texture), size=args.size, device=device)
    batch = backend.batches[0]
    samples: SampleMatrix = batch.samples
    texels = torch.cat([stacked(mip_chain(backend.pyramids[s].render_residual().detach()
                                          .contiguous(memory_format=torch.channels_last))) for s in batch.slots])
    texels = texels + torch.rand(texels.shape, generator=torch.Generator().manual_seed(0)).to(device)
    grad = torch.rand(samples.matrix.shape[0], texels.shape[1], generator=torch.Generator().manual_seed(1)).to(device)
    pixels, texel_count = samples.matrix.shape
    forward_entries, backward_entries = entries(samples.matrix), entries(samples.adjoint)

    leaf = texels.detach().requires_grad_(True)
    resolve(leaf, samples).backward(grad)
    assert torch.allclose(leaf.grad, samples.adjoint @ grad), "resolve's backward is its adjoint product"

    cases = {  # each backward alone: d loss / d texels from d loss / d pixels (`grad`)
        "library (CSR products)": (lambda: resolve(texels, samples), lambda: samples.adjoint @ grad),
        "gather + index_add": (lambda: gather_product(*forward_entries, texels, pixels),
                               lambda: gather_product(*backward_entries, grad, texel_count)),
        "spmv per channel": (lambda: spmv_product(samples.matrix, texels),
                             lambda: spmv_product(samples.adjoint, grad)),
    }
    print(f"{args.mesh.name} at {args.size} px, {len(batch.cameras.K)} views on {device}: P = {pixels:,} pixels, "
          f"T = {texel_count:,} texels (residual sides {backend.residual_sides}), "
          f"{samples.matrix.values().numel():,} entries\n")
    print("| resolve | forward ms | backward ms | max difference to the library |\n| --- | ---: | ---: | ---: |")
    reference: tuple[torch.Tensor, torch.Tensor] | None = None
    for name, (forward, backward) in cases.items():
        forward_s, _, out = timed(forward, args.reps + 1)  # the first call warms up; the best one counts
        backward_s, _, grad_out = timed(backward, args.reps + 1)
        forward_ms, backward_ms = forward_s * 1e3, backward_s * 1e3
        if reference is None:
            reference, difference = (out, grad_out), "-"
        else:
            gap = max(float((out - reference[0]).abs().max()), float((grad_out - reference[1]).abs().max()))
            scale = max(float(reference[0].abs().max()), float(reference[1].abs().max()))
            difference = f"{gap:.1e} (of {scale:.1f})"
            if gap > 1e-4 * max(scale, 1.0):
                print(f"| {name} | {forward_ms:.2f} | {backward_ms:.2f} | {difference}: DIFFERS |")
                return 1
        print(f"| {name} | {forward_ms:.2f} | {backward_ms:.2f} | {difference} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
