"""Evaluating perturbations of the explained examples in chunks.

Every method and metric that scores many perturbed copies of a batch (the
channel replays of Ablation-CAM and the Score-CAM family, the steps of the
deletion and insertion curves, the coalitions of exact Shapley values) walks
its (perturbation, example) pairs with :func:`evaluate_in_chunks`. As in
Captum, ``perturbations_per_eval`` counts perturbations *per example*: a batch
of N examples is scored ``N * perturbations_per_eval`` rows per forward pass.
Scores are gathered on the device without host synchronisation."""
from typing import Callable, Optional

import torch
from torch import Tensor
from tqdm import tqdm

from captum_xcam._utils.validation import check_positive_int


def evaluate_in_chunks(
    num_examples: int,
    num_perturbations: int,
    evaluate: Callable[[Tensor, Tensor], Tensor],
    perturbations_per_eval: int,
    device: torch.device,
    show_progress: bool = False,
    desc: str = "perturbations",
    skip: Optional[Tensor] = None,
) -> Tensor:
    r"""Calls ``evaluate(rows, perturbations)`` on chunks of (example,
    perturbation) pairs, ``perturbations_per_eval`` perturbations of every
    example per chunk, and gathers the returned scores (one per pair) into an
    (N, P) tensor. Pairs are taken perturbation by perturbation, each with the
    examples in order, so a chunk without skipped pairs lists ``rows``
    ``0 .. N-1`` repeatedly. Pairs where ``skip`` (N, P) is True are not
    evaluated and get 0."""
    chunk_size = check_positive_int(perturbations_per_eval, "perturbations_per_eval")
    chunk_size *= num_examples
    pairs = torch.arange(num_examples * num_perturbations, device=device)
    if skip is not None:
        pairs = pairs[~skip.T.reshape(-1).to(device)]
    values: Optional[Tensor] = None
    # An empty tensor still splits into one (empty) chunk: evaluate none.
    chunks = pairs.split(chunk_size) if len(pairs) else ()
    with tqdm(total=len(pairs), desc=desc, disable=not show_progress) as bar:
        for chunk in chunks:
            scores = evaluate(chunk % num_examples, chunk // num_examples)
            if values is None:
                values = scores.new_zeros(num_examples * num_perturbations)
            values[chunk.to(values.device)] = scores
            bar.update(len(chunk))
    if values is None:
        return torch.zeros(num_examples, num_perturbations, device=device)
    return values.reshape(num_perturbations, num_examples).T
