"""A PyTorch triangle rasterizer that gives what open3d's ray casting gives: for each pixel centre, the nearest
triangle the camera ray hits in front of the camera, the hit's barycentrics and its camera-space depth. It runs
on the CPU or CUDA, so the mesh backend works where open3d cannot be installed, and is the fast path on a GPU.

Device rule: everything runs on the device of the `vertices` tensor given (the Rasterizer's device); camera
matrices are moved there and every result lives there.

Method: homogeneous rasterization (Olano & Greer 1997). With camera-space corners v0, v1, v2 and the pixel's
ray direction d = K^-1 (x, y, 1), e_i = (v_j x v_k) . d is linear in (x, y); the ray hits the triangle at
t = det(v0, v1, v2) / sum(e) > 0 exactly when every e_i has the sign of the determinant, and e_i / sum(e) are
the barycentrics. No near-plane clipping is needed. Each triangle is tested only at the pixel centres inside
its screen bounding box, covered by power-of-two stencils; triangles with the same stencil are tested together
as one broadcast, a fixed number of pixels at a time (bounded memory for any mesh and resolution), and the
nearest hit per pixel is kept by scatter_reduce(amin) on a key that packs (depth bits, triangle id). Pixel
centres on a shared edge belong to one triangle (a top-left rule).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

CHUNK_CPU = 1 << 21  # pixel candidates tested at once (fewer, bigger kernels: threads wait less)
CHUNK_CUDA = 1 << 22
STENCILS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32)  # stencil sides (pixels); bigger triangles take several stencils
SMALLEST_POSITIVE = float(np.nextafter(np.float32(0), np.float32(1)))
NO_HIT = torch.iinfo(torch.int64).max
EDGES = ((1, 2), (2, 0), (0, 1))  # e_i uses the edge opposite corner i


@functools.cache
def open3d_available() -> bool:
    """True if `import open3d` works (it can also fail with OSError when libusb is missing)."""
    try:
        import open3d  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def choose_engine(device: torch.device | str = "cpu") -> str:
    """The ray caster for a device: open3d (Embree, faster on the CPU: see BENCHMARKS.md) on the CPU when it
    imports, else this module's PyTorch rasterizer ("torch"), always on CUDA."""
    if torch.device(device).type == "cpu" and open3d_available():
        return "open3d"
    return "torch"


@dataclass
class Hits:
    """The nearest hit at each of P = H x W pixel centres (row-major), on the vertices' device.

    face [P] int64 (-1 = no hit); bary [P, 2] (u, v): point = (1-u-v) p0 + u p1 + v p2 (0 on misses);
    depth [P]: the ray parameter t with d = K^-1 (x, y, 1), i.e. camera-space z (0 on misses);
    count [P] int64: how many triangles the ray hits in front of the camera (only when asked, else None).
    """

    face: torch.Tensor
    bary: torch.Tensor
    depth: torch.Tensor
    count: torch.Tensor | None = None


def edge_table(cam_vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Per triangle, one row [F, 16] of what the pixel test needs, for pixel centres p = (x, y, 1):
    0-8 edge coefficients c_i: e_i = c_i . p, signed so that inside is e >= 0; 9-11 thresholds: inside is
    e_i >= threshold_i, 0 on top-left edges, else the smallest positive float (e_i > 0); 12-14 plane
    coefficients g: g . p = sum(e) > 0 in front; 15 h: depth = h / (g . p).

    cam_vertices [N, 3] camera space; faces [F, 3] int64; K [3, 3]. Each edge's normal is computed from its
    corners in a fixed (lexicographic) order, so the two triangles sharing an edge get exactly opposite
    values and a pixel centre on it goes to exactly one of them."""
    corners = cam_vertices[faces]  # [F, 3, 3]
    normals = []
    for j, k in EDGES:
        vj, vk = corners[:, j], corners[:, k]
        swap = _lexicographic_greater(vj, vk)[:, None]
        a, b = torch.where(swap, vk, vj), torch.where(swap, vj, vk)
        n = torch.linalg.cross(a, b - a, dim=-1)  # = a x b, without the cancellation of two long vectors
        normals.append(torch.where(swap, -n, n))
    plane = torch.linalg.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0], dim=-1)
    offset = (plane * corners[:, 0]).sum(-1)  # the plane: plane . P = offset; det(v0, v1, v2) = offset
    sign = torch.where(offset < 0, -1.0, 1.0)
    inv_k = torch.linalg.inv(K.double().cpu()).to(plane)  # 3 x 3: on the host, once per view
    coef = _times_inverse_k(torch.stack(normals, 1), inv_k) * sign[:, None, None]
    top_left = (coef[..., 0] > 0) | ((coef[..., 0] == 0) & (coef[..., 1] > 0))
    threshold = torch.where(top_left, 0.0, SMALLEST_POSITIVE)  # inside: e >= threshold
    return torch.cat([coef.reshape(-1, 9), threshold, _times_inverse_k(plane, inv_k) * sign[:, None],
                      (offset * sign)[:, None]], 1)


def _times_inverse_k(n: torch.Tensor, inv_k: torch.Tensor) -> torch.Tensor:
    """n [..., 3] -> c [..., 3] with c . p = n . (K^-1 p), one elementwise op at a time (no matmul kernel
    or fused multiply-add that could round n and -n differently)."""
    return n[..., 0:1] * inv_k[0] + n[..., 1:2] * inv_k[1] + n[..., 2:3] * inv_k[2]


def _lexicographic_greater(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[F] bool: a > b comparing (x, y, z) in order, for a, b [F, 3]."""
    return (a[:, 0] > b[:, 0]) | ((a[:, 0] == b[:, 0]) & ((a[:, 1] > b[:, 1]) | ((a[:, 1] == b[:, 1])
                                                                               & (a[:, 2] > b[:, 2]))))


def screen_boxes(cam_vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, width: int, height: int
                 ) -> torch.Tensor:
    """[F, 4] int64 (x0, y0, x1, y1) inclusive ranges of the pixels whose centres the triangle's projection
    can cover; empty (x1 < x0) behind the camera; the whole image for triangles crossing the camera plane."""
    corners = cam_vertices[faces]  # [F, 3, 3]
    z = corners[..., 2]
    front = z > 0
    projected = _times_rows(corners, K.to(corners))
    xy = projected[..., :2] / torch.where(front, z, 1.0)[..., None]
    low = (xy.amin(1) - 0.5 - 1e-4).ceil()
    high = (xy.amax(1) - 0.5 + 1e-4).floor()
    crossing = (front.any(1) & ~front.all(1))[:, None]
    low = torch.where(crossing, 0.0, low)
    high = torch.where(crossing, torch.tensor([width - 1.0, height - 1.0], device=xy.device), high)
    limit = torch.tensor([width - 1.0, height - 1.0], device=xy.device)
    low = torch.minimum(low.clamp(min=0), limit + 1)
    high = torch.maximum(torch.minimum(high, limit), torch.tensor(-1.0, device=xy.device))
    box = torch.cat([low, high], 1).long()
    return torch.where(front.any(1)[:, None], box, torch.tensor([0, 0, -1, -1], device=xy.device))


def rasterize(cam_vertices: torch.Tensor, faces: torch.Tensor, K: torch.Tensor, width: int, height: int,
              count: bool = False, chunk: int | None = None) -> Hits:
    """The nearest hit per pixel centre (see Hits) of triangles faces [F, 3] with camera-space (OpenCV)
    vertices [N, 3] under intrinsics K [3, 3]; all on the vertices' device. count: also count every hit.

    Each triangle's screen box is covered by stencils of sx x sy pixels (sides from STENCILS, the smallest
    that fit, chosen per triangle; stencils an edge misses entirely are dropped), and triangles with the same
    stencil are tested together, `chunk` pixels at a time.
    """
    device = cam_vertices.device
    cam_vertices = cam_vertices.float()
    K = K.to(device=device, dtype=torch.float32)
    faces = faces.to(device)
    table = edge_table(cam_vertices, faces, K)
    box = screen_boxes(cam_vertices, faces, K, width, height)
    size = (box[:, 2:] - box[:, :2] + 1).clamp(min=0)  # [F, 2] (w, h)
    live = ((size.prod(1) > 0) & (table[:, 15] > 0)).nonzero().squeeze(1)  # 0: edge-on, never hit
    size = size[live]
    sides = torch.tensor(STENCILS, device=device)
    kind_xy = torch.searchsorted(sides, size.clamp(max=STENCILS[-1]))  # [L, 2] smallest stencil >= the box
    stencil = sides[kind_xy]
    tiles = torch.div(size + stencil - 1, stencil, rounding_mode="floor")  # [L, 2]
    kind = kind_xy[:, 0] * len(STENCILS) + kind_xy[:, 1]
    order = torch.argsort(kind, stable=True)
    live, kind, tiles, origin = live[order], kind[order], tiles[order], box[live[order], :2]
    tile_count = tiles.prod(1)
    ends = tile_count.cumsum(0)
    ends_host = ends.cpu().numpy()  # host copies once per view, at set-up
    kinds_host = torch.bincount(kind, minlength=len(STENCILS) ** 2).cpu().numpy()
    zbuffer = torch.full((width * height,), NO_HIT, dtype=torch.int64, device=device)
    counts = torch.zeros(width * height, dtype=torch.int64, device=device) if count else None
    chunk = chunk or (CHUNK_CUDA if device.type == "cuda" else CHUNK_CPU)
    first_of_kind = 0
    for kind_id, members in enumerate(kinds_host):
        if members == 0:
            continue
        stencil = (STENCILS[kind_id // len(STENCILS)], STENCILS[kind_id % len(STENCILS)])
        start = int(ends_host[first_of_kind - 1]) if first_of_kind else 0
        stop = int(ends_host[first_of_kind + members - 1])
        first_of_kind += members
        step = max(1, chunk // (stencil[0] * stencil[1]))
        for lo in range(start, stop, step):
            hi = min(lo + step, stop)
            first = int(np.searchsorted(ends_host, lo, side="right"))
            last = int(np.searchsorted(ends_host, hi - 1, side="right"))
            span_end = ends[first:last + 1]
            span_start = span_end - tile_count[first:last + 1]
            take = torch.minimum(span_end, torch.tensor(hi, device=device)) - span_start.clamp(min=lo)
            which = torch.repeat_interleave(torch.arange(first, last + 1, device=device), take, output_size=hi - lo)
            tile = torch.arange(lo, hi, device=device) - span_start[which - first]
            across = tiles[which, 0]
            corner = origin[which] + torch.stack([tile % across, torch.div(tile, across, rounding_mode="floor")],
                                                 1) * torch.tensor(stencil, device=device)
            face = live[which]
            rows = table.index_select(0, face)
            if max(stencil) > 4:
                keep = _stencil_may_hit(rows, corner, stencil).nonzero().squeeze(1)
                rows, face, corner = rows[keep], face[keep], corner[keep]
            pixel, key = _test_stencils(rows, face, corner, stencil, width, height)
            if counts is not None:
                counts.index_add_(0, pixel, torch.ones_like(pixel))
            zbuffer.scatter_reduce_(0, pixel, key, "amin")
    return resolve(zbuffer, table, width, counts)


def _stencil_may_hit(rows: torch.Tensor, corner: torch.Tensor, stencil: tuple[int, int]) -> torch.Tensor:
    """[n] bool: False where some edge is negative at every pixel centre of the stencil (it misses)."""
    x = corner[:, 0].float() + 0.5
    y = corner[:, 1].float() + 0.5
    may = torch.ones(len(rows), dtype=torch.bool, device=rows.device)
    for i in range(3):
        a, b, c = rows[:, 3 * i], rows[:, 3 * i + 1], rows[:, 3 * i + 2]
        best = a * x + b * y + c + a.clamp(min=0) * (stencil[0] - 1) + b.clamp(min=0) * (stencil[1] - 1)
        slack = 1e-5 * (a.abs() * (x + stencil[0]) + b.abs() * (y + stencil[1]) + c.abs())  # for rounding
        may &= best >= -slack
    return may


def _test_stencils(rows: torch.Tensor, face: torch.Tensor, corner: torch.Tensor, stencil: tuple[int, int],
                   width: int, height: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Test the sx x sy pixel centres from each corner [n, 2] against its triangle (edge-table rows [n, 16],
    ids face [n]): (flat pixel index [m], z-buffer key [m]) of the hits, key = depth bits << 32 | face."""
    device = rows.device
    sx, sy = stencil
    dx = torch.arange(sx, device=device, dtype=torch.float32).repeat(sy) + 0.5
    dy = torch.arange(sy, device=device, dtype=torch.float32).repeat_interleave(sx) + 0.5
    x = corner[:, :1].float() + dx  # [n, S] pixel centres
    y = corner[:, 1:].float() + dy
    inside = (x < width) & (y < height)
    for i in range(3):
        e = rows[:, 3 * i:3 * i + 1] * x + rows[:, 3 * i + 1:3 * i + 2] * y + rows[:, 3 * i + 2:3 * i + 3]
        inside &= e >= rows[:, 9 + i:10 + i]
    hit = inside.reshape(-1).nonzero().squeeze(1)
    owner = torch.div(hit, sx * sy, rounding_mode="floor")
    x, y = x.reshape(-1).index_select(0, hit), y.reshape(-1).index_select(0, hit)
    plane = rows.index_select(0, owner)[:, 12:16]
    front = plane[:, 0] * x + plane[:, 1] * y + plane[:, 2]
    ok = (front > 0).nonzero().squeeze(1)  # all e >= 0 imply it but for rounding on near edge-on triangles
    depth = (plane[:, 3] / front).index_select(0, ok)
    pixel = ((y - 0.5).long() * width + (x - 0.5).long()).index_select(0, ok)
    return pixel, (depth.view(torch.int32).long() << 32) | face.index_select(0, owner.index_select(0, ok))


def resolve(zbuffer: torch.Tensor, table: torch.Tensor, width: int, counts: torch.Tensor | None) -> Hits:
    """Hits from the z-buffer's packed keys: the winning triangle, its depth and barycentrics at the pixel."""
    hit = (zbuffer != NO_HIT).nonzero().squeeze(1)
    key = zbuffer.index_select(0, hit)
    face = torch.full_like(zbuffer, -1).index_copy_(0, hit, key & 0xFFFFFFFF)
    depth = torch.zeros(len(zbuffer), device=zbuffer.device).index_copy_(
        0, hit, (key >> 32).int().view(torch.float32))
    x = (hit % width).float() + 0.5
    y = torch.div(hit, width, rounding_mode="floor").float() + 0.5
    rows = table[:, [3, 4, 5, 6, 7, 8, 12, 13, 14]].index_select(0, key & 0xFFFFFFFF)  # e1, e2, plane
    values = rows.view(-1, 3, 3)
    e = values[..., 0] * x[:, None] + values[..., 1] * y[:, None] + values[..., 2]  # [m, 3]: e1, e2, g . p
    bary = torch.zeros(len(zbuffer), 2, device=zbuffer.device).index_copy_(0, hit, e[:, :2] / e[:, 2:])
    return Hits(face, bary, depth, counts)


def rasterize_camera(vertices: torch.Tensor, faces: torch.Tensor, world_to_cam: torch.Tensor, K: torch.Tensor,
                     width: int, height: int) -> Hits:
    """rasterize for world-space vertices [N, 3] and one OpenCV camera (world_to_cam [4, 4], K [3, 3])."""
    w2c = world_to_cam.to(device=vertices.device, dtype=torch.float32)
    return rasterize(_times_rows(vertices.float(), w2c[:3, :3]) + w2c[:3, 3], faces, K, width, height)


def pixel_directions(world_to_cam: torch.Tensor, K: torch.Tensor, width: int, height: int,
                     device: torch.device | str) -> torch.Tensor:
    """World-space ray directions [H * W, 3] through the pixel centres, scaled to camera z = 1 (as
    Cameras.rays), on `device`."""
    K = K.to(device=device, dtype=torch.float32)
    w2c = world_to_cam.to(device=device, dtype=torch.float32)
    ys, xs = torch.meshgrid(torch.arange(height, device=device, dtype=torch.float32) + 0.5,
                            torch.arange(width, device=device, dtype=torch.float32) + 0.5, indexing="ij")
    cam = torch.stack([(xs - K[0, 2]) / K[0, 0], (ys - K[1, 2]) / K[1, 1], torch.ones_like(xs)], -1)
    return _times_rows(cam.reshape(-1, 3), w2c[:3, :3].T)  # R^T d


def _times_rows(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """matrix [3, 3] applied to points [..., 3] elementwise in float32 (a CUDA matmul may round to TF32)."""
    return (points[..., None, :] * matrix).sum(-1)


# ---------------------------------------------------------------------------------------- UV layouts


def uv_shifts(uv: np.ndarray) -> list[tuple[float, float]]:
    """The tile offsets to rasterize a layout at: its own, or all 9 neighbours when it strays outside [0, 1]."""
    if uv.size and (uv.min() < -1e-6 or uv.max() > 1 + 1e-6):
        return [(dx, dy) for dx in (-1.0, 0.0, 1.0) for dy in (-1.0, 0.0, 1.0)]
    return [(0.0, 0.0)]


def rasterize_uv(uv: np.ndarray, faces: np.ndarray, height: int, width: int, count: bool = False,
                 engine: str | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Which triangle covers each texel centre of the UV layout (open3d ray casting, or the PyTorch rasterizer
    when open3d is absent; on the CPU).

    uv: [n, 2] image convention; faces: [f, 3]. Layouts that stray outside [0, 1] are wrapped (the texture
    repeats). Returns (face [H, W] int64, -1 = none; bary [H, W, 2]) or, with count, (hits [H, W], None).
    """
    engine = engine or choose_engine("cpu")
    shifts = uv_shifts(uv)
    verts = np.concatenate([np.stack([(uv[:, 0] + dx) * width, (uv[:, 1] + dy) * height, np.ones(len(uv))], 1)
                            for dx, dy in shifts]).astype(np.float32)
    tris = np.concatenate([faces + k * len(uv) for k in range(len(shifts))]).astype(np.int64)
    if engine == "open3d":
        face, bary, hits = _uv_open3d(verts, tris, height, width, count)
    else:  # the layout seen by a camera at the origin looking at the plane z = 1 with K = identity
        result = rasterize(torch.from_numpy(verts), torch.from_numpy(tris), torch.eye(3), width, height, count)
        face, bary = result.face.numpy(), result.bary.numpy()
        hits = None if result.count is None else result.count.numpy()
    if count:
        return hits.reshape(height, width), None
    face = np.where(face >= 0, face % max(len(faces), 1), -1).reshape(height, width)
    return face, bary.reshape(height, width, 2)


def _uv_open3d(verts: np.ndarray, tris: np.ndarray, height: int, width: int, count: bool
               ) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None]:
    """open3d's rays from z = 2 straight down at the texel centres: (face [P], bary [P, 2], None) or counts."""
    import open3d as o3d

    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.core.Tensor(verts), o3d.core.Tensor(tris.astype(np.uint32)))
    ys, xs = np.meshgrid(np.arange(height, dtype=np.float32) + 0.5, np.arange(width, dtype=np.float32) + 0.5,
                         indexing="ij")
    rays = np.stack([xs, ys, np.full_like(xs, 2), np.zeros_like(xs), np.zeros_like(xs), -np.ones_like(xs)], -1)
    rays = o3d.core.Tensor(rays.reshape(-1, 6))
    if count:
        return None, None, scene.count_intersections(rays).numpy().astype(np.int64)
    result = scene.cast_rays(rays)
    ids = result["primitive_ids"].numpy().astype(np.int64)
    ids[ids == scene.INVALID_ID] = -1
    return ids, result["primitive_uvs"].numpy(), None
