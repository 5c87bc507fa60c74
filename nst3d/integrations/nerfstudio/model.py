"""nerfacto with frozen geometry and a trainable appearance branch: what stylization optimises.

nerfacto computes density AND the colour head's geometry features with one hash-grid MLP (`mlp_base`), so
its geometry cannot be frozen while that grid is trained. `StyleNerfactoField` adds `mlp_style`, a second
hash-grid MLP of the same shape, initialised as a copy of `mlp_base`: density still comes from the frozen
`mlp_base`, the colour head (`mlp_head`) reads its geometry features from `mlp_style` instead. Before any
optimisation the model renders exactly like the nerfacto it was loaded from; afterwards only colours differ
(same density, same proposal networks, same samples). The original appearance stays in the model and its
checkpoints (`mlp_base` + `mlp_head_original`, a frozen copy of the colour head), so the content views can
always be rendered (`StyleNerfactoModel.original()`).

Checkpoints of a plain nerfacto run load into this model: the missing `mlp_style` weights are copied from
`mlp_base`, and the original colour head is kept as `mlp_head_original`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from nerfstudio.field_components.mlp import MLP, MLPWithHashEncoding
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


class StyleNerfactoField(NerfactoField):
    """NerfactoField whose colour head reads geometry features from a trainable twin of `mlp_base`.

    `original_appearance = True` renders the original colours (mlp_base features, original head).
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.mlp_style = _twin_hash_mlp(self.mlp_base)
        self.mlp_head_original = _twin_mlp(self.mlp_head)
        self.original_appearance = False

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
        if self.original_appearance:
            return density, base_features
        return density, self.style_features(self._sample_locations.detach())

    def style_features(self, positions: torch.Tensor) -> torch.Tensor:
        """The colour head's geometry features from the stylized branch, [..., geo_feat_dim], at sample
        positions [..., 3] normalised as get_density leaves them (`_sample_locations`)."""
        features = self.mlp_style(positions.reshape(-1, 3)).view(*positions.shape[:-1], -1)
        return features[..., 1:]

    def get_outputs(self, ray_samples, density_embedding=None):
        if not self.original_appearance:
            return super().get_outputs(ray_samples, density_embedding)
        stylized_head, self.mlp_head = self.mlp_head, self.mlp_head_original
        try:
            return super().get_outputs(ray_samples, density_embedding)
        finally:
            self.mlp_head = stylized_head


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
