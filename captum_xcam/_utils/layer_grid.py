r"""A layer's tensor as the ``(N, C, *spatial)`` grid that a CAM weights.

:class:`LayerGrid` applies the CAM's reshape transform (the user's, or the
built-in one of a recognised transformer), refuses a transformer's token or
channels-last tensor that has none, and, for the methods that change the
grid and replay the model (Ablation-CAM, LIFT-CAM), puts a grid back into the
layer's own layout: :meth:`LayerGrid.placed`."""
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from captum_xcam._utils.user_warnings import warn
from captum_xcam.reshape_transforms import ReshapeTransform, reshape_transform_for


class LayerGrid:
    r"""
    How a CAM sees one layer's tensor.

    Attributes:
        transform (callable or None): The reshape transform, None for a layer
                    whose tensor is already ``(N, C, *spatial)``.
    """

    def __init__(
        self, layer: nn.Module, transform: Optional[ReshapeTransform], model: Optional[nn.Module]
    ) -> None:
        if transform is not None and not callable(transform):
            raise TypeError(
                f"reshape_transform must be callable, got {type(transform).__name__}."
            )
        self.layer = layer
        self.model = model
        self.transform = transform if transform is not None else reshape_transform_for(model, layer)

    def __call__(self, tensor: Tensor) -> Tensor:
        r"""The grid ``(N, C, *spatial)`` of a layer tensor (N, ...)."""
        if self.transform is None:
            _check_not_tokens(tensor, self.layer, self.model)
            return tensor
        grid = self.transform(tensor)
        if not isinstance(grid, Tensor) or grid.dim() < 3 or grid.shape[0] != tensor.shape[0]:
            shape = tuple(grid.shape) if isinstance(grid, Tensor) else type(grid).__name__
            raise ValueError(
                f"reshape_transform turned the {type(self.layer).__name__} tensor of shape "
                f"{tuple(tensor.shape)} into {shape}; a CAM needs (N, C, *spatial) with the "
                f"same N ({tensor.shape[0]}) and at least one spatial dimension."
            )
        return grid

    def gradient(self, gradient: Tensor, layer_tensor: Tensor, grid: Tensor) -> Tensor:
        r"""The gradient with respect to the grid ``grid`` of ``layer_tensor``:
        the transform applied to the layer's ``gradient``, as pytorch-grad-cam
        does for any transform. Exact for a transform that rearranges
        elements; for one that computes new values it is not the gradient
        with respect to the grid, and a warning says so."""
        if self.transform is None:
            return gradient
        if self._element_index(layer_tensor, grid) is None:
            warn(
                f"The reshape_transform {self.transform!r} computes new values from the "
                f"{type(self.layer).__name__} tensor instead of rearranging its elements, "
                "so the transformed gradient (applied as pytorch-grad-cam applies it) is not "
                "the gradient of the target with respect to the grid: the weights "
                "approximate. Use a transform that rearranges (captum_xcam.TokenGrid, "
                "ChannelsLast) for exact weights.",
                UserWarning,
            )
        return self.transform(gradient)

    def placed(self, layer_tensor: Tensor, grid: Tensor) -> Callable[[Tensor, Tensor], Tensor]:
        r"""
        For a grid with a transform, and ``grid`` the grid of ``layer_tensor``
        (N, ...): a function ``place(values, rows)`` that gives the layer
        tensor of the explained examples ``rows`` with ``values``
        (M, C, *spatial) in place of their grid, everything the transform
        drops (prefix tokens) as in ``layer_tensor``; differentiable in
        ``values``.

        Raises:
            ValueError: when the transform computes new values rather than
                        rearranging the layer's elements, so that a grid
                        cannot be put back.
        """
        index = self._element_index(layer_tensor, grid)
        if index is None:
            raise ValueError(
                f"The reshape_transform {self.transform!r} computes new values from the "
                f"{type(self.layer).__name__} tensor instead of rearranging its elements "
                "(reshaping, permuting, dropping tokens), so that a changed grid cannot be "
                "put back into the layer: this method changes the grid and replays the model. "
                "Use a transform that rearranges (captum_xcam.TokenGrid, ChannelsLast), or a "
                "method that only reads the grid (the gradient methods, Score-CAM, EigenCAM)."
            )

        def place(values: Tensor, rows: Tensor) -> Tensor:
            originals = layer_tensor[rows.to(layer_tensor.device)].flatten(1)
            flat = values.reshape(len(values), -1).to(originals.dtype)
            placed = originals.index_copy(1, index, flat)
            return placed.reshape(len(values), *layer_tensor.shape[1:])

        return place

    def _element_index(self, layer_tensor: Tensor, grid: Tensor) -> Optional[Tensor]:
        r"""For each grid element, the flat index of the layer element it is;
        None unless the transform rearranges the elements (integral, in range,
        unique indices that give ``grid`` from ``layer_tensor``)."""
        assert self.transform is not None
        count = layer_tensor[:1].numel()
        positions = torch.arange(count, dtype=torch.float64, device=layer_tensor.device)
        position_grid = self.transform(positions.reshape(layer_tensor[:1].shape)).reshape(-1)
        index = position_grid.round().long()
        rearranges = (
            bool((position_grid == index).all())
            and bool(((index >= 0) & (index < count)).all())
            and len(torch.unique(index)) == len(index)
            and torch.equal(layer_tensor.flatten(1)[:, index], grid.flatten(1))
        )
        return index if rearranges else None


_ATTENTION = (nn.MultiheadAttention, nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)


def _check_not_tokens(tensor: Tensor, layer: nn.Module, model: Optional[nn.Module]) -> None:
    r"""A ValueError for a transformer's token tensor (N, T, D), or a
    channels-last map from a module that works on the last dimension, given
    without a reshape transform; a 1-D convolutional layer's (N, C, L) passes."""
    name = type(layer).__name__
    if tensor.dim() == 3 and (_works_on_last_dim(layer) or _in_transformer(layer, model)):
        raise ValueError(
            f"The {name} layer's tensor of shape {tuple(tensor.shape)} is a transformer's "
            "token sequence (N, tokens, features), not a (N, C, *spatial) map: a CAM of it "
            "would be a map over the features. Pass reshape_transform=captum_xcam."
            "TokenGrid(prefix_tokens=P) with P the tokens before the patch tokens (ViT: 1, "
            "the class token; DeiT distilled: 2; 0 for patch tokens only), and "
            "grid_size=(h, w) for a non-square patch grid. torchvision's and timm's ViT, "
            "DeiT and Swin are recognised when the model (or a module that contains it) is "
            "the forward function."
        )
    if tensor.dim() == 4 and _works_on_last_dim(layer):
        raise ValueError(
            f"The {name} layer's tensor of shape {tuple(tensor.shape)} is channels-last "
            "(N, h, w, C): a LayerNorm or Linear works on the last dimension. Pass "
            "reshape_transform=captum_xcam.ChannelsLast() (Swin's stages), or explain a "
            "layer with a (N, C, h, w) output."
        )


def _works_on_last_dim(layer: nn.Module) -> bool:
    r"""A LayerNorm or Linear (not a 2-D variant such as ConvNeXt's LayerNorm2d)."""
    plain = isinstance(layer, (nn.LayerNorm, nn.Linear)) and not type(layer).__name__.endswith("2d")
    return plain or isinstance(layer, _ATTENTION)


def _in_transformer(layer: nn.Module, model: Optional[nn.Module]) -> bool:
    r"""Whether the layer contains attention, or belongs to a model with
    attention and is not a 1-D convolution, normalisation or pooling."""
    if _has_attention(layer):
        return True
    one_d = (nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d, nn.AvgPool1d, nn.AdaptiveAvgPool1d)
    return model is not None and not isinstance(layer, one_d) and _has_attention(model)


def _has_attention(module: nn.Module) -> bool:
    return any(
        isinstance(m, _ATTENTION) or "Attention" in type(m).__name__ for m in module.modules()
    )
