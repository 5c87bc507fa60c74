"""nerfacto with frozen geometry and a trainable appearance branch: what stylization optimises.

nerfacto computes density AND the colour head's geometry features with one hash-grid MLP (`mlp_base`), so
its geometry cannot be frozen while that grid is trained. `StyleNerfactoField` adds `mlp_style`, a second
hash-grid MLP of the same shape, initialised as a copy of `mlp_base`: density still comes from the frozen
`mlp_base`, the colour head (`mlp_head`) reads its geometry features from `mlp_style` instead. Before any
optimisation the model renders exactly like the nerfacto it was loaded from; afterwards only colours differ
(same density, same proposal networks, same samples). The original appearance stays in the model and its
checkpoints (`mlp_base` + `mlp_head_original`, a frozen copy of the colour head), so the content views can
always be rendered (`StyleNerfactoModel.original()`).

The stylized colour is the same from every side, as paint is: the trainable head sees the view direction
averaged over the sphere (`d0`), and the original's own view-dependent part is added back unchanged:
    rgb(x, d) = head(d0, f_style(x)) + [head_original(d, f_base(x)) - head_original(d0, f_base(x))]
which is exactly the original colour before optimisation (head = head_original, f_style = f_base). Without
that, the optimiser paints different strokes for different directions, and the held-out views disagree.

Checkpoints of a plain nerfacto run load into this model: the missing `mlp_style` weights are copied from
`mlp_base`, and the original colour head is kept as `mlp_head_original`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from nerfstudio.field_components.field_heads import FieldHeadNames
from nerfstudio.field_components.mlp import MLP, MLPWithHashEncoding
from nerfstudio.fields.base_field import get_normalized_directions
from nerfstudio.fields.nerfacto_field import NerfactoField
from nerfstudio.models.nerfacto import NerfactoModel
from torch.nn import Parameter

STYLE_BRANCH = "field.mlp_style."
ORIGINAL_HEAD = "field.mlp_head_original."


def _twin_hash_mlp(base: MLPWithHashEncoding) -> MLPWithHashEncoding:
    """A new hash-grid MLP with the same shape (and implementation) as `base`; weights copied."""
    twin = MLPWithHashEncoding(
        num_levels=base.num_levels, min_res=base.min_res, max_res=base.max_res,
        log2_hashmap_size=base.log2_hashmap_size, features_per_level=base.features_per_level,
        hash_init_scale=base.hash_init_scale, num_layers=base.num_layers, layer_width=base.layer_width,
        out_dim=base.out_dim, skip_connections=base.skip_connections, activation=base.activation,
        out_activation=base.out_activation,
        implementation="torch" if isinstance(base.model, torch.nn.Sequential) else "tcnn")
    twin.load_state_dict(base.state_dict())
    return twin


def _twin_mlp(base: MLP) -> MLP:
    twin = MLP(in_dim=base.in_dim, num_layers=base.num_layers, layer_width=base.layer_width,
               out_dim=base.out_dim, skip_connections=base.skip_connections, activation=base.activation,
               out_activation=base.out_activation,
               implementation="tcnn" if getattr(base, "tcnn_encoding", None) is not None else "torch")
    twin.load_state_dict(base.state_dict())
    return twin


class _AveragedDirection(torch.nn.Module):
    """Stands in for a direction encoding: every direction gets `encoded` [D], the encoding averaged over the
    sphere (for spherical harmonics, the constant band alone)."""

    def __init__(self, encoded: torch.Tensor) -> None:
        super().__init__()
        self.encoded = encoded

    def forward(self, directions: torch.Tensor) -> torch.Tensor:  # [N, 3] -> [N, D]
        return self.encoded.to(directions).expand(len(directions), -1)


class StyleNerfactoField(NerfactoField):
    """NerfactoField whose colour head reads geometry features from a trainable twin of `mlp_base`.

    `original_appearance = True` renders the original colours (mlp_base features, original head).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mlp_style = _twin_hash_mlp(self.mlp_base)
        self.mlp_head_original = _twin_mlp(self.mlp_head)
        self.original_appearance = False
        self._direction_average: torch.Tensor | None = None  # see _averaged_encoding

    def reset_appearance(self) -> None:
        """Make the stylized branch equal to the original appearance again."""
        self.mlp_style.load_state_dict(self.mlp_base.state_dict())
        self.mlp_head.load_state_dict(self.mlp_head_original.state_dict())

    def get_density(self, ray_samples) -> tuple[torch.Tensor, torch.Tensor]:
        """Density from the frozen base (no graph unless normals need one) and the colour head's geometry
        features [..., geo_feat_dim] from the stylized branch (or the base, for the original appearance)."""
        frozen = contextlib.nullcontext() if self.use_pred_normals else torch.no_grad()
        with frozen:
            density, base_features = super().get_density(ray_samples)
        self._base_features = base_features  # for the view-dependent part get_outputs adds back
        if self.original_appearance:
            return density, base_features
        return density, self.style_features(self._sample_locations.detach())

    @contextlib.contextmanager
    def _head(self, head: MLP, averaged_direction: bool) -> Iterator[None]:
        """Within the block, nerfacto's get_outputs uses `head` (and the sphere-averaged direction)."""
        saved = self.mlp_head, self.direction_encoding
        self.mlp_head = head
        if averaged_direction:
            self.direction_encoding = _AveragedDirection(self._averaged_encoding())
        try:
            yield
        finally:
            self.mlp_head, self.direction_encoding = saved

    def _averaged_encoding(self) -> torch.Tensor:
        """The direction encoding [D] averaged over 1024 directions spread evenly on the sphere (the encoding
        has no parameters: computed once, not per patch)."""
        if self._direction_average is None:
            from nst3d.cameras import fibonacci_directions

            directions = get_normalized_directions(fibonacci_directions(1024))
            with torch.no_grad():
                device = next(self.mlp_head.parameters()).device
                self._direction_average = self.direction_encoding(directions.to(device)).float().mean(0)
        return self._direction_average

    def view_dependent_rgb(self, ray_samples, base_features: torch.Tensor) -> torch.Tensor:
        """The original appearance's view-dependent part [..., 3] (no gradient): the original head at the
        samples' directions minus the same at the sphere-averaged direction."""
        with torch.no_grad():
            with self._head(self.mlp_head_original, averaged_direction=False):
                seen = super().get_outputs(ray_samples, base_features)[FieldHeadNames.RGB]
            with self._head(self.mlp_head_original, averaged_direction=True):
                return seen - super().get_outputs(ray_samples, base_features)[FieldHeadNames.RGB]

    def stylized_rgb(self, ray_samples, style_features: torch.Tensor, view_dependent: torch.Tensor) -> torch.Tensor:
        """The stylized colour [..., 3]: the trainable head at the sphere-averaged direction on the stylized
        features, plus the original's view-dependent part (`view_dependent_rgb`), clamped to [0, 1]."""
        with self._head(self.mlp_head, averaged_direction=True):
            painted = super().get_outputs(ray_samples, style_features)[FieldHeadNames.RGB]
        return (painted + view_dependent).clamp(0.0, 1.0)

    def style_features(self, positions: torch.Tensor) -> torch.Tensor:
        """The colour head's geometry features from the stylized branch, [..., geo_feat_dim], at sample
        positions [..., 3] normalised as get_density leaves them (`_sample_locations`)."""
        features = self.mlp_style(positions.reshape(-1, 3)).view(*positions.shape[:-1], -1)
        return features[..., 1:]

    def get_outputs(self, ray_samples, density_embedding=None):
        """nerfacto's outputs, right after get_density (as Field.forward calls them): the original
        appearance, or the stylized colour (see the module docstring)."""
        if self.original_appearance:
            with self._head(self.mlp_head_original, averaged_direction=False):
                return super().get_outputs(ray_samples, density_embedding)
        with self._head(self.mlp_head, averaged_direction=True):
            outputs = super().get_outputs(ray_samples, density_embedding)
        view_dependent = self.view_dependent_rgb(ray_samples, self._base_features)
        outputs[FieldHeadNames.RGB] = (outputs[FieldHeadNames.RGB] + view_dependent).clamp(0.0, 1.0)
        return outputs


def nerfacto_field_kwargs(config: Any, num_images: int, spatial_distortion: Any) -> dict[str, Any]:
    """The arguments NerfactoModel.populate_modules (nerfstudio 1.1.5) builds its field with."""
    return dict(
        hidden_dim=config.hidden_dim, num_levels=config.num_levels, max_res=config.max_res,
        base_res=config.base_res, features_per_level=config.features_per_level,
        log2_hashmap_size=config.log2_hashmap_size, hidden_dim_color=config.hidden_dim_color,
        hidden_dim_transient=config.hidden_dim_transient, spatial_distortion=spatial_distortion,
        num_images=num_images, use_pred_normals=config.predict_normals,
        use_average_appearance_embedding=config.use_average_appearance_embedding,
        appearance_embedding_dim=config.appearance_embed_dim if config.use_appearance_embedding else 0,
        average_init_density=config.average_init_density, implementation=config.implementation)


class StyleNerfactoModel(NerfactoModel):
    """nerfacto for stylization: geometry (density field, proposal networks, camera and appearance
    embeddings) frozen; `appearance_parameters()` (the stylized branch and the colour head) trainable."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        trainable = {id(p) for p in self.appearance_parameters()}
        for parameter in self.parameters():
            parameter.requires_grad_(id(parameter) in trainable)

    def populate_modules(self) -> None:
        super().populate_modules()
        self.field = StyleNerfactoField(
            self.scene_box.aabb, **nerfacto_field_kwargs(self.config, self.num_train_data,
                                                          self.field.spatial_distortion))

    def appearance_parameters(self) -> list[Parameter]:
        """What stylization optimises: the stylized hash grid + its MLP, and the colour head."""
        return [*self.field.mlp_style.parameters(), *self.field.mlp_head.parameters()]

    def get_param_groups(self) -> dict[str, list[Parameter]]:
        return {"appearance": self.appearance_parameters()}

    def get_training_callbacks(self, training_callback_attributes) -> list:
        """None: nerfacto's callbacks anneal and update the proposal sampling, which is geometry (frozen)."""
        return []

    @contextlib.contextmanager
    def original(self) -> Iterator[None]:
        """Within the block, render the original (unstylized) appearance."""
        previous = self.field.original_appearance
        self.field.original_appearance = True
        try:
            yield
        finally:
            self.field.original_appearance = previous

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """Also loads plain nerfacto weights: the stylized branch and the kept original head start as copies
        of the original."""
        state = dict(state_dict)
        for key, value in state_dict.items():
            if key.startswith("field.mlp_base."):
                state.setdefault(STYLE_BRANCH + key[len("field.mlp_base."):], value.clone())
            if key.startswith("field.mlp_head."):
                state.setdefault(ORIGINAL_HEAD + key[len("field.mlp_head."):], value.clone())
        return super().load_state_dict(state, strict=strict, assign=assign)
