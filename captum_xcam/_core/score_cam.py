"""Score-CAM: Wang et al., CVPR Workshops 2020."""
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.typing import BaselineType, TargetType
from captum.attr._utils.attribution import PerturbationAttribution
from captum.log import log_usage
from torch import Tensor
from torch.nn import Module

from captum_xcam._core.layer_cam import LayerCam
from captum_xcam._core.layer_tail import layer_activations
from captum_xcam._core.replay import replay_channels
from captum_xcam._utils.model_state import without_data_parallel
from captum_xcam._utils.targets import TargetSelector, rows_of

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


class LayerScoreCam(LayerCam, PerturbationAttribution):
    r"""
    Score-CAM [Wang et al., CVPR Workshops 2020, https://arxiv.org/abs/1910.01279].
    A gradient-free CAM that weights each channel by the target output on the
    input masked by that channel's upsampled activation (the paper's Eq. 8,
    the "channel-wise increase of confidence"):

    .. math::
        H_k = s\big(\mathrm{Up}(A_k)\big), \qquad
        w_k = f\big(X_b + (X - X_b) \circ H_k\big) - f(X_b)

    ``Up`` is interpolation to each input's spatial size (bilinear for 2D,
    ``align_corners=False``), ``s`` min-max normalisation per example and
    channel (a constant channel gives the zero mask, hence ``w_k = 0``, known
    without a forward pass), ``X_b`` the ``baselines`` (default zeros, the
    paper's choice) and ``f`` the target output of ``forward_func``. Inputs
    with as many spatial dimensions as the layer are masked; other inputs pass
    unchanged. With ``channel_softmax=True`` the weights go through a softmax
    over the channels, as in the paper's Algorithm 1.

    The paper scores the *post-softmax* class probability. To reproduce it,
    explain a forward function that applies the softmax itself::

        >>> cam = LayerScoreCam(lambda x: model(x).softmax(dim=1), model.layer4)
        >>> attr = cam.attribute(images, target=labels, relu_attributions=True)

    Masked inputs are built and scored ``perturbations_per_eval`` at a time,
    in batches that may mix examples, so memory grows with that number, not
    with the channel count; channels with a constant map are not replayed. The
    masked inputs keep the memory format of the inputs: images in
    ``torch.channels_last`` make the many forward passes faster on most
    devices (about 1.4x on a CPU for ResNet-50), where the model accepts them.
    """

    def __init__(
        self,
        forward_func: Callable,
        layer: Module,
        device_ids: Union[None, List[int]] = None,
    ) -> None:
        LayerCam.__init__(self, forward_func, layer, device_ids)
        PerturbationAttribution.__init__(self, forward_func)

    @log_usage()
    def attribute(
        self,
        inputs: Union[Tensor, Tuple[Tensor, ...]],
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        attribute_to_layer_input: bool = False,
        relu_attributions: bool = False,
        attr_dim_summation: bool = True,
        baselines: BaselineType = None,
        perturbations_per_eval: int = 16,
        show_progress: bool = False,
        channel_softmax: bool = False,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`LayerCam.attribute`, and:

            baselines (scalar, Tensor or tuple, optional): The reference input
                        ``X_b``, in Captum's forms: a number, a tensor shaped
                        like the input (or broadcastable to it, such as one
                        example), or a tuple with one of these per input.
                        Default: None (zeros)
            perturbations_per_eval (int, optional): How many masked inputs are
                        evaluated in one forward pass. Default: 16
            show_progress (bool, optional): Show a progress bar over the
                        channels. Default: False
            channel_softmax (bool, optional): Softmax the weights over the
                        channels (the paper's Algorithm 1). Default: False

        Returns:
            *Tensor* of **attributions**, shaped as by :meth:`LayerCam.attribute`.
        """
        return self._attribute(
            inputs,
            target,
            additional_forward_args,
            attribute_to_layer_input,
            relu_attributions,
            attr_dim_summation,
            baselines=baselines,
            perturbations_per_eval=perturbations_per_eval,
            show_progress=show_progress,
            channel_softmax=channel_softmax,
        )

    def _activations_and_weights(
        self,
        inputs: Tuple[Tensor, ...],
        target: TargetType,
        additional_forward_args: Optional[Tuple[object, ...]],
        attribute_to_layer_input: bool,
        baselines: BaselineType = None,
        perturbations_per_eval: int = 16,
        show_progress: bool = False,
        channel_softmax: bool = False,
    ) -> Tuple[Tensor, Tensor]:
        activations, _ = layer_activations(
            without_data_parallel(self.forward_func),
            self.layer,
            inputs,
            additional_forward_args,
            attribute_to_layer_input,
        )
        spatial_dims = activations.dim() - 2
        masked = [x.dim() - 2 == spatial_dims for x in inputs]
        if not any(masked) or spatial_dims not in _INTERPOLATION:
            raise ValueError(
                f"Score-CAM masks inputs with the layer's {spatial_dims} spatial "
                f"dimension(s); no input has them (shapes "
                f"{[tuple(x.shape) for x in inputs]})."
            )
        references = format_baselines(baselines, inputs)
        args = additional_forward_args or ()
        with torch.no_grad():
            reference_output = self.forward_func(*references, *args)
        select = TargetSelector(target, reference_output)
        reference_scores = select(reference_output)

        def masked_scores(rows: Tensor, channels: Tensor) -> Tensor:
            maps = activations[rows, channels]
            masked_inputs = tuple(
                mask_input(x[rows], b[rows], maps) if m else x[rows]
                for x, b, m in zip(inputs, references, masked)
            )
            with torch.no_grad():
                output = self.forward_func(*masked_inputs, *(rows_of(args, rows) or ()))
            return select(output, rows) - reference_scores[rows.to(reference_scores.device)]

        flat = activations.flatten(2)
        weights = replay_channels(
            activations.shape[0],
            activations.shape[1],
            masked_scores,
            perturbations_per_eval,
            activations.device,
            show_progress,
            desc="Score-CAM channels",
            skip=flat.amax(2) == flat.amin(2),
        )
        if channel_softmax:
            weights = weights.softmax(dim=1)
        return activations, weights


def upsampled_masks(maps: Tensor, size: Tuple[int, ...]) -> Tensor:
    r"""Score-CAM's masks ``H``: each map (M, *spatial) interpolated to ``size``
    and min-max normalised to [0, 1]; a constant map gives zeros. Returns
    (M, 1, *size)."""
    mode = _INTERPOLATION[maps.dim() - 1]
    up = F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False)
    flat = up.flatten(1)
    low = flat.amin(1).reshape(-1, *([1] * (up.dim() - 1)))
    span = flat.amax(1).reshape(-1, *([1] * (up.dim() - 1))) - low
    return torch.where(span > 0, (up - low) / torch.where(span > 0, span, 1), 0)


def mask_input(x: Tensor, reference: Tensor, maps: Tensor) -> Tensor:
    r"""``X_b + (X - X_b) * H`` for M rows of an input and M activation maps,
    in the memory format of ``x`` (channels-last inputs make faster
    convolutions on many devices)."""
    masks = upsampled_masks(maps.to(x.device, x.dtype), tuple(x.shape[2:]))
    return torch.addcmul(reference, x - reference, masks, out=torch.empty_like(x))


def format_baselines(baselines: BaselineType, inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    r"""One reference tensor per input, shaped like it: ``None`` gives zeros,
    a number or a broadcastable tensor is broadcast."""
    if baselines is None:
        return tuple(torch.zeros_like(x) for x in inputs)
    if not isinstance(baselines, tuple):
        baselines = (baselines,)
    if len(baselines) != len(inputs):
        raise ValueError(
            f"Got {len(baselines)} baselines for {len(inputs)} inputs."
        )
    references = []
    for i, (b, x) in enumerate(zip(baselines, inputs)):
        b = torch.as_tensor(b, dtype=x.dtype, device=x.device)
        try:
            references.append(b.broadcast_to(x.shape))
        except RuntimeError:
            raise ValueError(
                f"baselines[{i}] of shape {tuple(b.shape)} does not broadcast to "
                f"the input's shape {tuple(x.shape)}."
            ) from None
    return tuple(references)


