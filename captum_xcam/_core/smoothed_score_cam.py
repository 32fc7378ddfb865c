"""SS-CAM: Wang, Naidu et al., "Smoothed Score-CAM", 2020."""
from typing import Dict, Optional, Tuple, Union

import torch
from captum._utils.typing import BaselineType, TargetType
from captum.log import log_usage
from torch import Tensor

from captum_xcam._core.channel_selection import TopChannels
from captum_xcam._core.registry import PERTURBATION, register_method
from captum_xcam._core.score_cam import LayerScoreCam, MaskSamples
from captum_xcam._utils.validation import check_positive_int


@register_method(
    "sscam",
    name="SS-CAM",
    paper="Wang, Naidu et al., 2020, https://arxiv.org/abs/2006.14255",
    family=PERTURBATION,
    formula="Score-CAM averaged over noisy masks H_k + delta_s",
)
class LayerSmoothedScoreCam(LayerScoreCam):
    r"""
    SS-CAM [Wang, Naidu et al., "SS-CAM: Smoothed Score-CAM for Sharper Visual
    Feature Localization", 2020, https://arxiv.org/abs/2006.14255]: Score-CAM
    averaged over ``num_samples`` noisy copies of the masks,

    .. math::
        w_k = \frac{1}{S} \sum_{s=1}^{S}
            f\big(X_b + (X - X_b) \circ (H_k + \delta_s)\big) - f(X_b),
        \qquad \delta_s \sim \mathcal{N}(0, \sigma^2)

    with ``H_k`` Score-CAM's normalised upsampled mask and ``delta_s`` a noise
    image at the input's resolution, drawn once per call from a generator
    seeded with ``seed`` and shared by every channel and example, so that the
    maps are reproducible and a batch gives the same maps as its examples one
    by one. Defaults ``num_samples=35``, ``stddev=2.0`` are torchcam's. The
    noise is in units of the masks' [0, 1] range, and that default drowns
    them: on the demo's SmallCNN (``captum-xcam demo``) half of the ReLU'd
    maps are all zero, and the others agree with Score-CAM's at a cosine of
    about 0.5; ``stddev=0.1`` keeps Score-CAM's maps (cosine 1.00), 0.25 gives
    0.6. Choose ``stddev`` for the model at hand. The cost is ``num_samples``
    times Score-CAM's (a constant channel is replayed too: its mask is pure
    noise). With ``stddev=0`` SS-CAM is Score-CAM.
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
        num_samples: int = 35,
        stddev: float = 2.0,
        seed: int = 0,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`LayerScoreCam.attribute`, and:

            num_samples (int, optional): Noisy copies of each mask.
                        Default: 35
            stddev (float, optional): Standard deviation of the noise added to
                        the masks (which lie in [0, 1]). Default: 2.0
            seed (int, optional): Seed of the noise. Default: 0

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
            num_samples=num_samples,
            stddev=stddev,
            seed=seed,
        )

    def _mask_samples(
        self, num_samples: int = 35, stddev: float = 2.0, seed: int = 0
    ) -> MaskSamples:
        check_positive_int(num_samples, "num_samples")
        if not stddev >= 0:
            raise ValueError(f"stddev must be a non-negative number, got {stddev!r}.")
        noise: Dict[Tuple[int, ...], Tensor] = {}

        def noisy(masks: Tensor, sample: Tensor) -> Tensor:
            size = tuple(masks.shape[2:])
            if size not in noise:
                generator = torch.Generator().manual_seed(seed)
                draws = torch.randn((num_samples, 1) + size, generator=generator,
                                    dtype=torch.float64)
                noise[size] = draws.mul_(stddev).to(masks.device, masks.dtype)
            return masks + noise[size][sample]

        return MaskSamples(num_samples, noisy, zero_if_constant=stddev == 0)

