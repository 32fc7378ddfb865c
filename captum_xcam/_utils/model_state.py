"""Leave the explained model exactly as it was found."""
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional

import torch
from torch.nn import DataParallel, Module
from torch.nn.parallel import DistributedDataParallel


def modules_of(forward_func: Callable, layer: Module) -> List[Module]:
    r"""The modules an attribution may touch: the model behind ``forward_func``
    (itself, or the owner of a bound method such as ``model.forward``) and the
    layer."""
    model = model_of(forward_func)
    return [layer] if model is None else [model, layer]


def model_of(forward_func: Callable) -> Optional[Module]:
    if isinstance(forward_func, Module):
        return forward_func
    owner = getattr(forward_func, "__self__", None)
    return owner if isinstance(owner, Module) else None


def without_data_parallel(forward_func: Callable) -> Callable:
    r"""The module inside a ``DataParallel`` (or ``DistributedDataParallel``)
    model given as ``forward_func`` (or its ``forward``), else
    ``forward_func``: hooks that must see the whole batch at once run there,
    on the module's own device."""
    model = model_of(forward_func)
    if not isinstance(model, (DataParallel, DistributedDataParallel)):
        return forward_func
    if forward_func is model or forward_func == model.forward:
        return model.module
    return forward_func


@contextmanager
def preserved_model_state(roots: List[Module]) -> Iterator[None]:
    r"""Restores, on success and on error, what running an attribution could
    change: each module's train/eval flag and attribute set (Captum's DeepLift
    leaves ``input``/``output`` tensors on modules), every buffer (BatchNorm
    running statistics move in train mode) and every ``.grad`` field."""
    modules = list({id(m): m for root in roots for m in root.modules()}.values())
    flags = [(m, m.training, set(m.__dict__)) for m in modules]
    buffers = {id(b): b for m in modules for b in m.buffers(recurse=False)}
    saved_buffers = [(b, b.detach().clone()) for b in buffers.values()]
    params = {id(p): p for m in modules for p in m.parameters(recurse=False)}
    saved_grads = [
        (p, p.grad, None if p.grad is None else p.grad.detach().clone())
        for p in params.values()
    ]
    try:
        yield
    finally:
        for module, training, names in flags:
            module.training = training
            for name in set(module.__dict__) - names:
                delattr(module, name)
        with torch.no_grad():
            for buffer, saved in saved_buffers:
                buffer.copy_(saved)
            for param, grad, saved_grad in saved_grads:
                param.grad = grad
                if grad is not None and saved_grad is not None:
                    grad.copy_(saved_grad)
