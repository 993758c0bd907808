"""Named, ordered layer groups (stem ... blocks ...) for freezing and discriminative learning rates."""

from __future__ import annotations

from torch import nn

Groups = list[tuple[str, list[str]]]


def _unit(module_name: str) -> str:
    """`blocks.3.1.conv_pw` -> `blocks.3`; `conv_head` -> `conv_head`."""
    parts = module_name.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 and parts[1].isdigit() else parts[0]


def timm_groups(model: nn.Module) -> Groups:
    """timm's own coarse group_matcher, with names read off the modules each group holds."""
    from timm.models import group_parameters

    by_id = group_parameters(model, model.group_matcher(coarse=True))
    groups: Groups = []
    for i, params in enumerate(by_id.values()):
        if not params:
            continue
        units = list(dict.fromkeys(_unit(p.rsplit(".", 1)[0]) for p in params))
        name = "stem" if i == 0 else "+".join(units)
        groups.append((name, list(params)))
    return _dedupe(groups)


def module_groups(body: nn.Module, expand: tuple[str, ...] = ("features",)) -> Groups:
    """Generic grouping for torchvision-style models: one group per top-level child, with the
    children of big sequential containers (`features`) as groups of their own; leading leaf
    layers (conv1, bn1, ...) form the stem."""
    groups: Groups = []
    stem: list[str] = []
    for child_name, child in body.named_children():
        if child_name in expand and isinstance(child, nn.Sequential):
            for sub_name, sub in child.named_children():
                _append(groups, f"{child_name}.{sub_name}", sub)
        elif not list(child.children()) and not groups:
            stem += [f"{child_name}.{n}" for n, _ in child.named_parameters()]
        else:
            _append(groups, child_name, child)
    if stem:
        groups.insert(0, ("stem", stem))
    elif groups:  # features.0 of torchvision's VGG/MobileNet/EfficientNet/ConvNeXt is their stem
        groups[0] = ("stem", groups[0][1])
    return _dedupe(groups)


def _append(groups: Groups, prefix: str, module: nn.Module) -> None:
    names = [f"{prefix}.{n}" for n, _ in module.named_parameters()]
    if names:
        groups.append((prefix, names))


def _dedupe(groups: Groups) -> Groups:
    seen: dict[str, int] = {}
    out: Groups = []
    for name, params in groups:
        seen[name] = seen.get(name, 0) + 1
        out.append((name if seen[name] == 1 else f"{name}#{seen[name]}", params))
    return out
