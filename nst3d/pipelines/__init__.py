"""The stylization pipelines as library code: `nst3d.pipelines.run.run(adapter, options)` owns the sequence once
(device, VGG, styles, objective, backend, loop, held-out evaluation, export, contact sheet, report), and one small
adapter per backend (image, mesh, splat, nerf) does only what differs. Every entry point (the CLI, the worker,
the batch runner, the benchmarks) calls these; the report they all write is `nst3d.pipelines.report.Report`.

Submodules are imported on use (`from nst3d.pipelines.mesh import stylize_mesh_file`), so that reading a report
(nst3d.pipelines.report) does not load torch.
"""
