"""Close views of a splat: surface points drawn from the Gaussians, the side they are seen from, and cameras at the
stroke scale's octaves (nst3d.scales) looking at them; zoomed crops of capture cameras.

Points: Gaussian centres drawn with probability opacity x disc area (the two largest scales' product), so the
draw follows the visible surface area, not the Gaussian count. Normal: the Gaussian's shortest axis (a trained
splat builds surfaces from flat discs; a round one faces the cameras that see it), turned to the side of the
whole-object pool's cameras (orbits, or the capture's own) that see the point in their depth maps: a donut's
inner ring faces the hole, an inside-out scene's ground is seen from above; a point no pool view sees is
dropped, and so is one that the close camera would see through more than half opacity (`transmittance`).

Device rule: everything here runs on the CPU (cameras are CPU tensors, nst3d.cameras): the scene's tensors are
copied to the CPU once per call; the backend moves the cameras to its device with the rest of the pool.
"""

from __future__ import annotations

import torch

from nst3d.backends.splat.scene import FOV_DEGREES, SplatScene, framing_points, robust_bounds
from nst3d.backends.splat.split import rotation_matrices
from nst3d.cameras import Cameras, jitter_directions
from nst3d.scales import bounding_diagonal, distance_for_height, surface_cameras, zoomed

MIN_TRANSMITTANCE = 0.5
#: A pool view sees a point when its depth map there is within this share of the bounding diagonal of the point.
SEEN_TOLERANCE = 0.02
#: Gaussians within this share of the view height in front of the point are part of its surface, not occluders.
SURFACE_DEPTH = 0.1
#: Close views per training point are jittered this much about the chosen side's normal.
JITTER_DEGREES = 20.0
FLAT = 0.5  # a Gaussian whose shortest axis is under this share of the middle one is a disc (its normal counts)
OVERSAMPLE = 8  # candidate points drawn per point wanted (some are hidden)


def scene_diagonal(scene: SplatScene) -> float:
    """The bounding diagonal of the opaque Gaussians' centres within the robust radius (floaters left out)."""
    points = framing_points(scene)
    center, radius = robust_bounds(points)
    inside = points[(points - center).norm(dim=-1) <= radius]
    return bounding_diagonal(inside if len(inside) >= 2 else points)


def transmittance(scene: SplatScene, origins: torch.Tensor, targets: torch.Tensor, surface: torch.Tensor,
                  chunk: int = 1 << 15) -> torch.Tensor:
    """[V] the light left along each segment origins [V, 3] -> targets [V, 3] through the scene's Gaussians
    (each counted at its peak along the ray, opacity x exp(-maha^2 / 2): the 2D splat's value at that pixel),
    ignoring Gaussians whose peak lies within surface [V] (world units) of the target."""
    s = scene.to("cpu")
    rotation = rotation_matrices(s.quats)  # [N, 3, 3]
    precision = rotation @ torch.diag_embed(1 / s.scales.clamp(min=1e-12) ** 2) @ rotation.transpose(1, 2)
    direction = targets - origins
    length = direction.norm(dim=-1).clamp(min=1e-12)
    unit = direction / length[:, None]
    log_left = torch.zeros(len(origins))
    for start in range(0, len(s.means), chunk):
        part = slice(start, start + chunk)
        P, mean, opacity = precision[part], s.means[part], s.opacities[part]
        offset = origins[:, None] - mean[None]  # [V, n, 3]
        pu = torch.einsum("nij,vj->vni", P, unit)  # [V, n, 3]
        upu = (pu * unit[:, None]).sum(-1).clamp(min=1e-20)
        t = -(pu * offset).sum(-1) / upu  # [V, n] the peak along the ray
        closest = offset + t[..., None] * unit[:, None]
        maha = torch.einsum("vni,nij,vnj->vn", closest, P, closest)
        alpha = (opacity[None] * torch.exp(-0.5 * maha)).clamp(max=0.99)
        between = (t > 0) & (t < (length - surface)[:, None])
        log_left += torch.log1p(-alpha * between).sum(-1)
    return log_left.exp()


def seen_by(points: torch.Tensor, cameras: Cameras, depth: torch.Tensor, tolerance: float) -> torch.Tensor:
    """[P, C] whether camera c sees point p [P, 3]: in front, inside its image, and its depth map ([C, 1, H, W],
    0 = nothing) there within `tolerance` (world units) of the point's depth (nothing nearer hides it)."""
    w2c = cameras.world_to_cam.float()
    local = torch.einsum("cij,pj->pci", w2c[:, :3, :3], points) + w2c[:, :3, 3]
    z = local[..., 2]
    pixel = torch.einsum("cij,pcj->pci", cameras.K[:, :2, :].float(), local / z.clamp(min=1e-9)[..., None])
    col, row = pixel[..., 0].floor().long(), pixel[..., 1].floor().long()
    inside = (z > 0) & (col >= 0) & (col < cameras.width) & (row >= 0) & (row < cameras.height)
    index = torch.arange(len(cameras))[None].expand_as(col)
    seen = depth[index, 0, row.clamp(0, cameras.height - 1), col.clamp(0, cameras.width - 1)]
    return inside & (seen > 0) & ((seen - z).abs() <= tolerance)


def surface_points(scene: SplatScene, count: int, view_height: float, generator: torch.Generator,
                   cameras: Cameras, depth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [V, 3], normals [V, 3], unit, pointing to the side each is seen from), V <= count: see the module
    docstring. cameras [C] and their depth maps [C, 1, H, W] (CPU): views known to be outside the object (the
    whole-object pool, or the capture's). view_height: the close views' height (how far away they stand)."""
    s = scene.to("cpu")
    axes = s.scales.sort(dim=-1).values
    weight = s.opacities * axes[:, 1] * axes[:, 2]
    weight = torch.where(s.opacities >= 0.2, weight, torch.zeros_like(weight))
    if float(weight.sum()) <= 0:
        weight = torch.ones(len(s))
    pick = torch.multinomial(weight, count * OVERSAMPLE, replacement=True, generator=generator)
    shortest = s.scales[pick].argmin(-1)
    normal = rotation_matrices(s.quats[pick]).gather(2, shortest[:, None, None].expand(-1, 3, 1))[..., 0]
    points = s.means[pick]
    seen = seen_by(points, cameras, depth, SEEN_TOLERANCE * scene_diagonal(s)).float()  # [P, C]
    to_cameras = torch.nn.functional.normalize(cameras.centers[None] - points[:, None], dim=-1)  # [P, C, 3]
    towards = torch.nn.functional.normalize((to_cameras * seen[..., None]).sum(1), dim=-1)  # [P, 3]
    normal = normal * torch.sign((towards * normal).sum(-1, keepdim=True) + 1e-12)
    flat = axes[pick, 0] < FLAT * axes[pick, 1]
    normal = torch.where(flat[:, None], normal, towards)  # a round Gaussian has no normal: face the cameras
    distance = distance_for_height(view_height, FOV_DEGREES)
    surface = torch.full((len(points),), SURFACE_DEPTH * view_height)
    clear = transmittance(s, points + normal * distance, points, surface) >= MIN_TRANSMITTANCE
    keep = torch.nonzero((seen.sum(-1) > 0) & clear).squeeze(1)[:count]
    return points[keep], normal[keep]


def close_cameras(scene: SplatScene, heights: list[float], points_per_height: list[int], group: int, size: int,
                  generator: torch.Generator, cameras: Cameras, depth: torch.Tensor) -> Cameras | None:
    """Training cameras at each octave height (finest first): points_per_height[k] surface points, `group`
    views each (a training batch: the same point from directions jittered about its normal, so the
    consistency term compares them). cameras, depth: see surface_points. None when no point is visible."""
    w2c, K = [], []
    for height, count in zip(heights, points_per_height, strict=True):
        if count == 0:
            continue
        points, normals = surface_points(scene, count, height, generator, cameras, depth)
        if len(points) == 0:
            continue
        directions = jitter_directions(normals.repeat_interleave(group, 0), JITTER_DEGREES, generator)
        cams = surface_cameras(points.repeat_interleave(group, 0), directions, height, size, size, FOV_DEGREES)
        w2c.append(cams.world_to_cam)
        K.append(cams.K)
    return Cameras(torch.cat(w2c), torch.cat(K), size, size) if w2c else None


def zoomed_capture(cameras: Cameras, depth: torch.Tensor, mask: torch.Tensor, heights: list[float], count: int,
                   generator: torch.Generator) -> Cameras | None:
    """`count` crops of capture cameras [C] (their depth, mask [C, 1, H, W] on the CPU), cycling through the
    octave heights: each a random camera zoomed on a random covered pixel so that its height covers the
    octave's height at that pixel's depth (never zoomed out). None when no pixel is covered."""
    covered = (mask[:, 0] >= 0.5) & (depth[:, 0] > 0)
    cams = torch.nonzero(covered.flatten(1).any(-1)).squeeze(1)
    if len(cams) == 0 or count == 0:
        return None
    picked = cams[torch.randint(len(cams), (count,), generator=generator)]
    centers, factors = [], []
    for k, cam in enumerate(picked.tolist()):
        ys, xs = torch.nonzero(covered[cam], as_tuple=True)
        i = int(torch.randint(len(ys), (1,), generator=generator))
        z = float(depth[cam, 0, ys[i], xs[i]])
        seen = z * cameras.height / float(cameras.K[cam, 1, 1])  # world height the view covers at that depth
        factors.append(max(1.0, seen / heights[k % len(heights)]))
        centers.append(torch.stack([xs[i], ys[i]]).float() + 0.5)
    return zoomed(cameras[picked.tolist()], torch.tensor(factors), torch.stack(centers))


def octave_shares(points: int, heights: list[float]) -> list[int]:
    """Surface points per octave height (finest first), in proportion to 1 / height (a finer view covers less of
    the surface, so more of them cover it), rounded so they add up to `points`."""
    weights = [1 / h for h in heights]
    exact = [points * w / sum(weights) for w in weights]
    shares = [int(e) for e in exact]
    for k in sorted(range(len(heights)), key=lambda k: shares[k] - exact[k])[: points - sum(shares)]:
        shares[k] += 1
    return shares
