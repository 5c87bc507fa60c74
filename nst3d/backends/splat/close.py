"""Close views of a splat: surface points drawn from the Gaussians, the side they are seen from, and cameras at the
stroke scale's octaves (nst3d.scales) looking at them; zoomed crops of capture cameras.

Points: Gaussian centres drawn with probability opacity x disc area (the two largest scales' product), so the
draw follows the visible surface area, not the Gaussian count. Normal: the Gaussian's shortest axis (a trained
splat builds surfaces from flat discs). Side: with orbit views, the side from which the point is seen through
the least opacity (`transmittance`, ties going away from the centre: a donut's inner ring faces the hole); with
a capture, the side its nearest capture camera is on (an inside-out scene's ground is seen from above, never
from below). Points seen through more than half opacity from their side are dropped.

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
#: Gaussians within this share of the view height in front of the point are part of its surface, not occluders.
SURFACE_DEPTH = 0.1
#: Close views per training point are jittered this much about the chosen side's normal.
JITTER_DEGREES = 20.0
OVERSAMPLE = 4  # candidate points drawn per point wanted (some are hidden)


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


def surface_points(scene: SplatScene, count: int, view_height: float, generator: torch.Generator,
                   capture_centers: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(points [V, 3], normals [V, 3], unit, pointing to the side each is seen from), V <= count: see the module
    docstring. view_height: the views' height there (how far away they stand, and what counts as surface)."""
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
    distance = distance_for_height(view_height, FOV_DEGREES)
    surface = torch.full((len(points),), SURFACE_DEPTH * view_height)
    if capture_centers is not None:
        nearest = capture_centers[torch.cdist(points, capture_centers).argmin(-1)]
        normal = normal * torch.sign(((nearest - points) * normal).sum(-1, keepdim=True) + 1e-12)
        left = transmittance(s, points + normal * distance, points, surface)
    else:
        center, _ = robust_bounds(framing_points(s))
        normal = normal * torch.sign(((points - center) * normal).sum(-1, keepdim=True) + 1e-12)
        out, back = (transmittance(s, points + sign * normal * distance, points, surface) for sign in (1, -1))
        normal = torch.where((back > out + 0.05)[:, None], -normal, normal)
        left = torch.maximum(out, back)
    seen = torch.nonzero(left >= MIN_TRANSMITTANCE).squeeze(1)[:count]
    return points[seen], normal[seen]


def close_cameras(scene: SplatScene, heights: list[float], points_per_height: list[int], group: int, size: int,
                  generator: torch.Generator, capture_centers: torch.Tensor | None = None) -> Cameras | None:
    """Training cameras at each octave height (finest first): points_per_height[k] surface points, `group`
    views each (a training batch: the same point from directions jittered about its normal, so the
    consistency term compares them). None when no point is visible."""
    w2c, K = [], []
    for height, count in zip(heights, points_per_height, strict=True):
        if count == 0:
            continue
        points, normals = surface_points(scene, count, height, generator, capture_centers)
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
