r"""Reshape transforms: a transformer layer's tensor as the ``(N, C, *spatial)``
grid that a CAM weights.

Every CAM constructor takes ``reshape_transform=``, a callable from the
layer's tensor to ``(N, C, *spatial)`` (pytorch-grad-cam's name). Two cover
the usual layouts:

- :class:`TokenGrid`: ViT and DeiT tokens ``(N, P + h*w, D)``, the ``P``
  prefix tokens (class, distillation, register tokens) dropped, the patch
  tokens laid out on their ``h x w`` grid;
- :class:`ChannelsLast`: Swin's ``(N, h, w, C)`` maps.

For torchvision's and timm's ViT, DeiT and Swin, :func:`reshape_transform_for`
finds the right one from the model, and the CAMs call it themselves when no
transform is given, so that ``LayerGradCam(vit, vit.blocks[-1].norm1)`` gives
a map on the patch grid.

A transform that only rearranges the layer's elements (reshapes,
permutations, dropped tokens, as both built-in ones do) serves every method:
Ablation-CAM and LIFT-CAM then change the grid's channels in the layer's own
layout, leaving the dropped (prefix) tokens as they are. The gradient methods
apply the transform to the gradient too, as pytorch-grad-cam does: exact for a
rearrangement, and with a warning that the weights are approximate otherwise.
"""
import math
from typing import Callable, Optional, Tuple

from torch import Tensor, nn

ReshapeTransform = Callable[[Tensor], Tensor]


class TokenGrid:
    r"""
    ``(N, P + h*w, D)`` tokens to the ``(N, D, h, w)`` grid of their patch
    tokens: the first ``prefix_tokens`` tokens are dropped, the rest laid out
    row by row, as the patch embeddings of ViT and DeiT order them.

    Args:
        prefix_tokens (int, optional): Tokens before the patch tokens: 1 for
                    ViT (the class token), 2 for DeiT distilled (class and
                    distillation tokens), more with register tokens; 0 for a
                    sequence of patch tokens only. Default: 1
        grid_size (tuple[int, int], optional): The patch grid ``(h, w)``.
                    Default: None (a square grid)

    Example::

        >>> cam = LayerXGradCam(deit, deit.blocks[-1].norm1,
        ...                     reshape_transform=TokenGrid(prefix_tokens=2))
    """

    def __init__(self, prefix_tokens: int = 1, grid_size: Optional[Tuple[int, int]] = None):
        if not isinstance(prefix_tokens, int) or prefix_tokens < 0:
            raise ValueError(f"prefix_tokens must be an int >= 0, got {prefix_tokens!r}.")
        self.prefix_tokens = prefix_tokens
        self.grid_size = None if grid_size is None else (int(grid_size[0]), int(grid_size[1]))

    def __call__(self, tokens: Tensor) -> Tensor:
        if tokens.dim() != 3:
            raise ValueError(
                f"TokenGrid takes (N, tokens, features) tensors, got shape {tuple(tokens.shape)}."
            )
        patches = tokens.shape[1] - self.prefix_tokens
        h, w = self.grid_size or _square(patches, tokens.shape, self.prefix_tokens)
        if h * w != patches:
            raise ValueError(
                f"A tensor of shape {tuple(tokens.shape)} has {patches} tokens after "
                f"{self.prefix_tokens} prefix token(s), not the {h} x {w} of grid_size."
            )
        grid = tokens[:, self.prefix_tokens:].reshape(tokens.shape[0], h, w, tokens.shape[2])
        return grid.permute(0, 3, 1, 2)

    def __repr__(self) -> str:
        return f"TokenGrid(prefix_tokens={self.prefix_tokens}, grid_size={self.grid_size})"


def _square(patches: int, shape: Tuple[int, ...], prefix_tokens: int) -> Tuple[int, int]:
    side = math.isqrt(max(patches, 0))
    if patches <= 0 or side * side != patches:
        raise ValueError(
            f"A tensor of shape {tuple(shape)} has {patches} tokens after {prefix_tokens} "
            "prefix token(s), not a square grid: pass TokenGrid(prefix_tokens, "
            "grid_size=(h, w)) with the model's patch grid, or the right prefix_tokens."
        )
    return side, side


class ChannelsLast:
    r"""
    ``(N, *spatial, C)`` maps (Swin's stages, ConvNeXt-style blocks in
    channels-last layout) to ``(N, C, *spatial)``.

    Example::

        >>> cam = LayerGradCam(swin, swin.layers[-1], reshape_transform=ChannelsLast())
    """

    def __call__(self, tensor: Tensor) -> Tensor:
        if tensor.dim() < 3:
            raise ValueError(
                f"ChannelsLast takes (N, *spatial, C) tensors, got shape {tuple(tensor.shape)}."
            )
        return tensor.movedim(-1, 1)

    def __repr__(self) -> str:
        return "ChannelsLast()"


class TransformerLayout:
    r"""
    The layouts of a recognised vision transformer, told apart by the
    tensor: 3-D token tensors go through a :class:`TokenGrid` (its prefix
    tokens, 0 for the model's patch embedding or Swin's token sequences),
    4-D channels-last maps through :class:`ChannelsLast`, and the others
    (the patch embedding's convolution, ``(N, C, h, w)``) pass unchanged.

    Args:
        prefix_tokens (int): The model's prefix tokens.
        grid_size (tuple[int, int], optional): The model's patch grid, or None.
        channels_last (bool): Whether the model's 4-D maps are channels-last.
    """

    def __init__(
        self, prefix_tokens: int, grid_size: Optional[Tuple[int, int]], channels_last: bool
    ) -> None:
        self.prefix_tokens = prefix_tokens
        self.grid_size = grid_size
        self.channels_last = channels_last

    def __call__(self, tensor: Tensor) -> Tensor:
        if tensor.dim() == 3:
            return self._tokens(tensor.shape[1])(tensor)
        if tensor.dim() == 4 and self.channels_last:
            return ChannelsLast()(tensor)
        return tensor

    def _tokens(self, count: int) -> TokenGrid:
        if self.grid_size is not None:
            h, w = self.grid_size
            for prefix in (self.prefix_tokens, 0):
                if count == prefix + h * w:
                    return TokenGrid(prefix, (h, w))
        return TokenGrid(self.prefix_tokens if self.prefix_tokens < count else 0)

    def __repr__(self) -> str:
        return (
            f"TransformerLayout(prefix_tokens={self.prefix_tokens}, grid_size={self.grid_size}, "
            f"channels_last={self.channels_last})"
        )


def reshape_transform_for(
    model: Optional[nn.Module], layer: nn.Module
) -> Optional[ReshapeTransform]:
    r"""
    The reshape transform for ``layer`` of a torchvision or timm ViT, DeiT or
    Swin inside ``model`` (the model itself or any module that contains it,
    such as a wrapper), or None for other models.

    The transform handles every layer of the transformer: token tensors of
    ViT/DeiT blocks (the model's prefix tokens dropped), Swin's channels-last
    stages and token sequences, and the patch embedding's convolution
    (unchanged).
    """
    if model is None:
        return None
    for module in model.modules():
        if any(m is layer for m in module.modules()):
            layout = _layout_of(module, layer)
            if layout is not None:
                return layout
    return None


def _layout_of(model: nn.Module, layer: nn.Module) -> Optional[TransformerLayout]:
    kind = _family(model)
    if kind == "vit":
        return TransformerLayout(_prefix_tokens(model), _grid_size(model), channels_last=False)
    if kind == "swin":
        return TransformerLayout(0, None, channels_last=not _channels_first(model, layer))
    return None


def _family(model: nn.Module) -> Optional[str]:
    names = {cls.__module__ + "." + cls.__name__ for cls in type(model).__mro__}
    if names & {
        "timm.models.vision_transformer.VisionTransformer",
        "torchvision.models.vision_transformer.VisionTransformer",
    }:
        return "vit"
    if names & {
        "timm.models.swin_transformer.SwinTransformer",
        "timm.models.swin_transformer_v2.SwinTransformerV2",
        "torchvision.models.swin_transformer.SwinTransformer",
    }:
        return "swin"
    return None


def _prefix_tokens(vit: nn.Module) -> int:
    prefix = getattr(vit, "num_prefix_tokens", None)  # timm: class, distillation, registers
    return int(prefix) if prefix is not None else 1  # torchvision: the class token


def _grid_size(vit: nn.Module) -> Optional[Tuple[int, int]]:
    patch_embed = getattr(vit, "patch_embed", None)
    if patch_embed is not None:  # timm; None where the image size is dynamic
        grid = getattr(patch_embed, "grid_size", None)
        dynamic = getattr(vit, "dynamic_img_size", False)
        return None if grid is None or dynamic else (int(grid[0]), int(grid[1]))
    image_size, patch_size = getattr(vit, "image_size", None), getattr(vit, "patch_size", None)
    if image_size and patch_size:  # torchvision
        return image_size // patch_size, image_size // patch_size
    return None


def _channels_first(swin: nn.Module, layer: nn.Module) -> bool:
    r"""Whether a Swin's 4-D ``layer`` tensor is ``(N, C, h, w)``: a
    convolution's (the patch embedding), or torchvision's final permutation's."""
    return isinstance(layer, nn.Conv2d) or layer is getattr(swin, "permute", None)
