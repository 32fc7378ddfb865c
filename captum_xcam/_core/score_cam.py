"""Score-CAM: Wang et al., CVPR Workshops 2020."""
from typing import Any, Callable, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from captum._utils.typing import BaselineType, TargetType
from captum.log import log_usage
from torch import Tensor

from captum_xcam._core.cam_attribution import PerturbationCamAttribution
from captum_xcam._core.channel_selection import TopChannels
from captum_xcam._core.registry import PERTURBATION, register_method
from captum_xcam._utils.chunks import evaluate_in_chunks
from captum_xcam._utils.replay import Replay, fast_replay
from captum_xcam._utils.targets import TargetSelector, rows_of

_INTERPOLATION = {1: "linear", 2: "bilinear", 3: "trilinear"}


@register_method(
    "scorecam",
    name="Score-CAM",
    paper="Wang et al., CVPR Workshops 2020, https://arxiv.org/abs/1910.01279",
    family=PERTURBATION,
    formula="w_k = f(X_b + (X - X_b) H_k) - f(X_b), H_k the normalised upsampled map",
)
class LayerScoreCam(PerturbationCamAttribution):
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

    Masked inputs are built and scored ``perturbations_per_eval`` channels of
    every example per forward pass (``N * perturbations_per_eval`` rows for N
    examples, as Captum counts), so memory grows with that number, not with
    the channel count; channels with a constant map are not replayed. On a
    CPU the default 16 is within 5 % (ResNet-18) and 9 % (ResNet-50) of the
    fastest of 4 to 64 rows per pass (benchmarks/results/replay_chunks.md).

    The masked inputs are scored through a faster copy of ``forward_func``
    (:mod:`captum_xcam._utils.replay`): batch norm folded into the
    convolution before it for a model in eval mode, and on a CPU the memory
    format (the inputs' own or channels-last) that the first forward passes
    measure faster; the model itself is untouched. The copy is checked
    against ``forward_func`` on the inputs first (within 1e-5 of the largest
    output; a warning says why where it cannot be used), and the maps agree
    with ``optimized_replays=False`` to float rounding. To score a softmax
    and keep the folding, wrap the model in a module rather than a lambda
    (``nn.Sequential(model, nn.Softmax(dim=1))``); a Python function that
    calls the model is traced through it where torch.fx can.
    """

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
        optimized_replays: bool = True,
        channel_selection: Optional[TopChannels] = None,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`CamAttribution.attribute`, and:

            baselines (scalar, Tensor or tuple, optional): The reference input
                        ``X_b``, in Captum's forms: a number, a tensor shaped
                        like the input (or broadcastable to it, such as one
                        example), or a tuple with one of these per input.
                        Default: None (zeros)
            perturbations_per_eval (int, optional): How many masked copies
                        of each example are evaluated in one forward pass (as
                        in Captum: N examples make N times as many rows).
                        Default: 16
            show_progress (bool, optional): Show a progress bar over the
                        channels. Default: False
            channel_softmax (bool, optional): Softmax the weights over the
                        channels (the paper's Algorithm 1). Default: False
            optimized_replays (bool, optional): Score the masked inputs
                        through the faster, checked copy of forward_func
                        described above; False scores them through
                        forward_func itself. Default: True
            channel_selection (TopChannels, optional): Replay only the top
                        channels of each example by a cheap criterion
                        (:class:`~captum_xcam.TopChannels`); the others get
                        weight 0. Default: None (every channel)

        Returns:
            *Tensor* of **attributions**, shaped as by :meth:`CamAttribution.attribute`.
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
            optimized_replays=optimized_replays,
            channel_selection=channel_selection,
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
        optimized_replays: bool = True,
        channel_selection: Optional[TopChannels] = None,
        **sampling: Any,
    ) -> Tuple[Tensor, Tensor]:
        activations = self._layer_grid(inputs, additional_forward_args, attribute_to_layer_input)
        spatial_dims = activations.dim() - 2
        masked = [x.dim() - 2 == spatial_dims for x in inputs]
        if not any(masked) or spatial_dims not in _INTERPOLATION:
            raise ValueError(
                f"Score-CAM masks inputs with the layer's {spatial_dims} spatial "
                f"dimension(s); no input has them (shapes "
                f"{[tuple(x.shape) for x in inputs]})."
            )
        samples = self._mask_samples(**sampling)
        unselected = self._unselected_channels(
            channel_selection, activations, inputs, target, additional_forward_args,
            attribute_to_layer_input)
        skip = skipped_channels(activations, samples, unselected)
        references = format_baselines(baselines, inputs)
        args = additional_forward_args or ()
        replay = (fast_replay(self.forward_func, self.layer, inputs, args, self.method_info.name)
                  if optimized_replays and not bool(skip.all()) else Replay(self.forward_func))
        with torch.inference_mode():
            reference_output = replay.forward(*references, *args)
        select = TargetSelector(target, reference_output)
        reference_scores = select(reference_output)
        n, channels = activations.shape[:2]

        def masked_scores(rows: Tensor, perturbations: Tensor) -> Tensor:
            maps = activations[rows, perturbations % channels]
            sample = perturbations // channels
            masked_inputs = tuple(
                mask_input(x[rows], b[rows], samples.apply(maps, sample, x)) if m else x[rows]
                for x, b, m in zip(inputs, references, masked)
            )
            with torch.inference_mode():
                output = replay(masked_inputs, rows_of(args, rows) or ())
            return select(output, rows) - reference_scores[rows.to(reference_scores.device)]

        scores = evaluate_in_chunks(
            n,
            channels * samples.count,
            masked_scores,
            perturbations_per_eval,
            activations.device,
            show_progress,
            desc=f"{self.method_info.name} channels",
            skip=skip.repeat(1, samples.count),
        )
        weights = scores.reshape(n, samples.count, channels).mean(1)
        if channel_softmax:  # over the evaluated channels
            if unselected is not None:
                weights = weights.masked_fill(unselected, -torch.inf)
            weights = weights.softmax(dim=1)
        return activations, weights

    def _mask_samples(self) -> "MaskSamples":
        r"""Score-CAM scores each channel's mask once, as it is."""
        return MaskSamples(1, lambda masks, sample: masks)


class MaskSamples:
    r"""How the Score-CAM family scores each channel: ``count`` versions of
    its mask ``H_k``, the ``s``-th given by ``transform(masks, s)`` for masks
    (M, 1, *size) at an input's resolution and sample indices ``s`` (M,), the
    weight being the mean of the versions' increases of confidence.
    ``zero_if_constant``: a constant channel's zero mask gives weight 0 in
    every version (so it need not be replayed)."""

    def __init__(
        self,
        count: int,
        transform: Callable[[Tensor, Tensor], Tensor],
        zero_if_constant: bool = True,
    ) -> None:
        self.count = count
        self.transform = transform
        self.zero_if_constant = zero_if_constant

    def apply(self, maps: Tensor, sample: Tensor, x: Tensor) -> Tensor:
        r"""The masks (M, 1, *size) for M activation maps and samples, at the
        resolution of input ``x``."""
        masks = upsampled_masks(maps.to(x.device, x.dtype), tuple(x.shape[2:]))
        return self.transform(masks, sample.to(x.device))


def skipped_channels(
    activations: Tensor, samples: MaskSamples, unselected: Optional[Tensor]
) -> Tensor:
    r"""The channels (N, K) that are not replayed: the constant ones where
    ``samples`` knows their weight is 0, and the ``unselected`` ones."""
    flat = activations.flatten(2)
    skip = (flat.amax(2) == flat.amin(2)) if samples.zero_if_constant else torch.zeros_like(
        flat[..., 0], dtype=torch.bool)
    return skip if unselected is None else skip | unselected


def upsampled_masks(maps: Tensor, size: Tuple[int, ...]) -> Tensor:
    r"""Score-CAM's masks ``H``: each map (M, *spatial) interpolated to ``size``
    and min-max normalised to [0, 1]; a constant map gives zeros. Constancy is
    decided on the map itself: interpolation rounds a constant map (a 1x1 one,
    say) into one that varies by an ulp, which normalisation would blow up
    into a mask of rounding noise. Returns (M, 1, *size)."""
    mode = _INTERPOLATION[maps.dim() - 1]
    up = F.interpolate(maps.unsqueeze(1), size=size, mode=mode, align_corners=False)
    shape = (-1,) + (1,) * (up.dim() - 1)
    flat = up.flatten(1)
    low = flat.amin(1).reshape(shape)
    span = flat.amax(1).reshape(shape) - low
    varies = (maps.flatten(1).amax(1) > maps.flatten(1).amin(1)).reshape(shape) & (span > 0)
    return torch.where(varies, (up - low) / torch.where(varies, span, 1), 0)


def mask_input(x: Tensor, reference: Tensor, masks: Tensor) -> Tensor:
    r"""``X_b + (X - X_b) * H`` for M rows of an input and M masks, in the
    memory format of ``x``. Detached: the scores of masked inputs need no
    gradient, and ``out=`` refuses inputs that require one."""
    x, reference = x.detach(), reference.detach()
    return torch.addcmul(reference, x - reference, masks.detach(), out=torch.empty_like(x))


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


