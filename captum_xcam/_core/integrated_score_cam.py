"""IS-CAM: Naidu et al., "Integrated Score-CAM", 2020."""
from typing import Optional, Tuple, Union

from captum._utils.typing import BaselineType, TargetType
from captum.log import log_usage
from torch import Tensor

from captum_xcam._core.channel_selection import TopChannels
from captum_xcam._core.registry import PERTURBATION, register_method
from captum_xcam._core.score_cam import LayerScoreCam, MaskSamples
from captum_xcam._utils.validation import check_positive_int


@register_method(
    "iscam",
    name="IS-CAM",
    paper="Naidu et al., 2020, https://arxiv.org/abs/2010.03023",
    family=PERTURBATION,
    formula="Score-CAM averaged over the scaled masks (s/S) H_k, s = 1..S",
)
class LayerIntegratedScoreCam(LayerScoreCam):
    r"""
    IS-CAM [Naidu et al., "IS-CAM: Integrated Score-CAM for axiomatic-based
    explanations", 2020, https://arxiv.org/abs/2010.03023]: Score-CAM's
    increase of confidence integrated, as Integrated Gradients does, along the
    straight path from no mask to the full mask, by the right Riemann sum of
    ``num_samples`` steps:

    .. math::
        w_k = \frac{1}{S} \sum_{s=1}^{S}
            f\Big(X_b + (X - X_b) \circ \frac{s}{S} H_k\Big) - f(X_b)

    with ``H_k`` Score-CAM's normalised upsampled mask. The last step is
    Score-CAM's own term, so ``num_samples=1`` gives Score-CAM. torchcam's
    ``ISCAM`` reads the paper differently: its masks are scaled by cumulative
    coefficients ``sum_{j<=s} j/S``, which exceed 1, and its weights are
    summed, not averaged; its maps differ from these. The cost is
    ``num_samples`` times Score-CAM's.
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
        num_samples: int = 10,
    ) -> Tensor:
        r"""
        Arguments as in :meth:`LayerScoreCam.attribute`, and:

            num_samples (int, optional): Steps of the path from no mask to
                        the full mask. Default: 10

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
        )

    def _mask_samples(self, num_samples: int = 10) -> MaskSamples:
        check_positive_int(num_samples, "num_samples")

        def scaled(masks: Tensor, sample: Tensor) -> Tensor:
            scale = (sample + 1).to(masks.dtype) / num_samples
            return masks * scale.reshape((-1,) + (1,) * (masks.dim() - 1))

        return MaskSamples(num_samples, scaled)
