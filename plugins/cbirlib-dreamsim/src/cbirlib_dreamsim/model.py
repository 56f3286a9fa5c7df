"""DreamSim rebuilt from timm ViTs and its published checkpoints (no peft / open_clip).

DreamSim (Fu et al., NeurIPS 2023) fine-tunes ViT-B/16 backbones with LoRA on the
``qkv`` projections of every attention block. The ``dreamsim`` package builds each
backbone as a DINO-style ViT, wraps the whole model with peft and loads the adapter. The
same function is computed here with plain timm ``VisionTransformer`` s and the LoRA
deltas merged into the ``qkv`` weights (``W + alpha / r * B @ A``, as peft's ``merge``):

``dino``
    DINO ViT-B/16; the embedding is the CLS token *after the last block and before the
    final LayerNorm* (the package hooks ``blocks[11]``), 768-d; ImageNet mean/std.
``clip`` / ``open_clip``
    CLIP / OpenCLIP ViT-B/16 image towers: LayerNorm before the blocks (``pos_drop`` in
    the checkpoint, ``norm_pre`` in timm), LayerNorm eps 1e-5, QuickGELU for OpenAI CLIP;
    the embedding is the normed CLS token times the checkpoint's ``proj`` (768 x 512);
    OpenAI CLIP mean/std.

The branch embeddings are concatenated and centred (their mean over features is
subtracted, DreamSim's ``normalize_embeds``); L2 normalisation follows in the extractor,
so cosine similarity of two embeddings is ``1 -`` the DreamSim distance.
"""

from __future__ import annotations

import json
import logging
import math
import re
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from cbirlib.errors import WeightsError
from cbirlib.weights import load_into, load_state_dict
from cbirlib_dreamsim.files import BRANCH_FILES, adapter_file, get_variant

if TYPE_CHECKING:  # pragma: no cover
    from timm.models.vision_transformer import VisionTransformer

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "OPENAI_CLIP_MEAN",
    "OPENAI_CLIP_STD",
    "Branch",
    "DreamSimModel",
    "build_vit",
    "load_dreamsim",
    "lora_deltas",
]

logger = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

_NORM = {
    "dino": (IMAGENET_MEAN, IMAGENET_STD),
    "clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
    "open_clip": (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD),
}
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?extractor_list\.(\d+)\.model\.(.+)\.lora_([AB])(?:\.default)?\.weight$"
)


def _patch_embed(**kwargs: Any) -> nn.Module:
    """timm's PatchEmbed, always with a bias (the CLIP-as-DINO files have one; timm drops
    it when ``pre_norm=True``)."""
    from timm.layers.patch_embed import PatchEmbed

    return PatchEmbed(**{**kwargs, "bias": True})


def build_vit(branch: str, *, device: str | torch.device = "cpu") -> VisionTransformer:
    """An uninitialised timm ViT-B/16 (224 px) shaped like DreamSim's ``branch`` backbone.

    Parameters
    ----------
    branch
        ``"dino"``, ``"clip"`` or ``"open_clip"``.
    device
        ``"meta"`` gives the structure without memory; ``"cpu"`` allocates (uninitialised:
        load a state dict into it).
    """
    from timm.layers.norm import LayerNorm
    from timm.models.vision_transformer import VisionTransformer

    clip = branch != "dino"
    with torch.device("meta"):
        vit = VisionTransformer(
            img_size=224,
            patch_size=16,
            embed_dim=768,
            depth=12,
            num_heads=12,
            mlp_ratio=4.0,
            qkv_bias=True,
            num_classes=0,
            global_pool="token",
            class_token=True,
            pre_norm=clip,
            norm_layer=partial(LayerNorm, eps=1e-5 if clip else 1e-6),
            act_layer="quick_gelu" if branch == "clip" else "gelu",
            weight_init="skip",
            embed_layer=_patch_embed,
        )
    return vit if torch.device(device).type == "meta" else vit.to_empty(device=device)


class Branch(nn.Module):
    """One backbone: its own normalisation of ``[0, 1]`` RGB input, CLS token, projection."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, name: str, vit: VisionTransformer, proj: torch.Tensor | None) -> None:
        super().__init__()
        self.name = name
        self.vit = vit
        mean, std = _NORM[name]
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.proj = nn.Parameter(proj, requires_grad=False) if proj is not None else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, 224, 224)`` in ``[0, 1]`` -> ``(n, 768)`` (DINO) or ``(n, 512)`` (CLIP)."""
        tokens: torch.Tensor = self.vit.forward_features((x - self.mean) / self.std)
        cls = tokens[:, 0]
        return cls if self.proj is None else cls @ self.proj.to(cls.dtype)


class DreamSimModel(nn.Module):
    """The DreamSim embedding: concatenated branch embeddings, centred per sample."""

    def __init__(self, branches: list[Branch]) -> None:
        super().__init__()
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(n, 3, 224, 224)`` RGB in ``[0, 1]`` -> ``(n, dim)`` centred embeddings."""
        emb = torch.cat([b(x).float() for b in self.branches], dim=1)
        return emb - emb.mean(dim=1, keepdim=True)


def _read_adapter_config(path: Path) -> dict[str, Any]:
    try:
        cfg: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read LoRA adapter config {path}: {exc}") from exc
    problems = []
    if cfg.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {cfg.get('peft_type')!r} (only 'LORA')")
    for flag in ("use_dora", "fan_in_fan_out", "lora_bias"):
        if cfg.get(flag):
            problems.append(f"{flag}=true")
    for pattern in ("rank_pattern", "alpha_pattern"):
        if cfg.get(pattern):
            problems.append(f"a non-empty {pattern}")
    if not isinstance(cfg.get("r"), int) or cfg["r"] < 1 or "lora_alpha" not in cfg:
        problems.append(f"r={cfg.get('r')!r}, lora_alpha={cfg.get('lora_alpha')!r}")
    if problems:
        raise WeightsError(f"unsupported LoRA adapter config {path}: {', '.join(problems)}")
    return cfg


def lora_deltas(
    config_path: Path, weights_path: Path, n_branches: int
) -> list[dict[str, torch.Tensor]]:
    """The LoRA weight deltas of a peft adapter, per branch, keyed by timm parameter name.

    Parameters
    ----------
    config_path, weights_path
        ``adapter_config.json`` and ``adapter_model.safetensors`` / ``.bin``.
    n_branches
        Number of backbones (the adapter's ``extractor_list`` indices must be below it).

    Returns
    -------
    list of dict
        For branch ``i``: ``{"blocks.0.attn.qkv.weight": scale * B @ A, ...}``.

    Raises
    ------
    WeightsError
        A key that is not a LoRA A/B matrix of ``extractor_list.<i>.model``, an A without
        its B (or the reverse), mismatched ranks, or an unsupported adapter config.
    """
    cfg = _read_adapter_config(config_path)
    r = int(cfg["r"])
    scale = float(cfg["lora_alpha"]) / (math.sqrt(r) if cfg.get("use_rslora") else r)
    sd = load_state_dict(weights_path, strip=())
    pairs: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unexpected = []
    for key, value in sd.items():
        m = _LORA_KEY.match(key)
        if m is None or int(m.group(1)) >= n_branches:
            unexpected.append(key)
            continue
        pairs.setdefault((int(m.group(1)), m.group(2)), {})[m.group(3)] = value
    if unexpected or not pairs:
        raise WeightsError(
            f"LoRA adapter {weights_path} does not fit DreamSim's {n_branches} backbone(s): "
            f"{len(unexpected)} unexpected keys ({', '.join(unexpected[:3])}); expected keys "
            "like base_model.model.extractor_list.<i>.model.blocks.<j>.attn.qkv.lora_A.weight"
        )
    deltas: list[dict[str, torch.Tensor]] = [{} for _ in range(n_branches)]
    for (i, module), ab in sorted(pairs.items()):
        a, b = ab.get("A"), ab.get("B")
        if a is None or b is None or a.ndim != 2 or b.ndim != 2 or b.shape[1] != a.shape[0]:
            raise WeightsError(
                f"LoRA adapter {weights_path}: extractor_list.{i}.model.{module} needs "
                f"lora_A (r, in) and lora_B (out, r), got "
                f"{ {k: tuple(v.shape) for k, v in ab.items()} }"
            )
        deltas[i][f"{module}.weight"] = scale * (b.double() @ a.double()).float()
    return deltas


def _branch_state_dict(
    branch: str, path: Path
) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    sd = load_state_dict(path, strip=("module.", "backbone."))
    if branch == "dino":
        return sd, None
    if "proj" not in sd:
        raise WeightsError(
            f"DreamSim {branch} checkpoint {path} has no 'proj' (768 x 512 image projection); "
            f"found keys {list(sd)[:5]}"
        )
    proj = sd.pop("proj")
    if tuple(proj.shape) != (768, 512):
        raise WeightsError(
            f"DreamSim {branch} checkpoint {path}: 'proj' has shape {tuple(proj.shape)}, "
            "expected (768, 512)"
        )
    return {re.sub(r"^pos_drop\.", "norm_pre.", k): v for k, v in sd.items()}, proj


def load_dreamsim(variant: str, root: Path) -> DreamSimModel:
    """Build DreamSim ``variant`` from the files in ``root`` (see :mod:`.files`).

    Backbones are created on the meta device, materialised uninitialised and filled
    strictly from their checkpoints, with the LoRA deltas merged into the ``qkv``
    weights. Nothing is downloaded here.

    Raises
    ------
    WeightsError
        A file is missing or unreadable, or does not fit the architecture (missing and
        unexpected keys are listed).
    """
    v = get_variant(variant)
    adapter = adapter_file(variant, root)
    if adapter is None:
        raise WeightsError(f"no LoRA adapter weights in {root / v.adapter}")
    deltas = lora_deltas(root / v.adapter / "adapter_config.json", adapter, len(v.branches))
    branches = []
    for i, name in enumerate(v.branches):
        path = root / BRANCH_FILES[name]
        sd, proj = _branch_state_dict(name, path)
        for key, delta in deltas[i].items():
            if key not in sd or sd[key].shape != delta.shape:
                raise WeightsError(
                    f"LoRA adapter {adapter} targets {key} {tuple(delta.shape)} of the {name} "
                    f"backbone, which {path} does not have with that shape"
                )
            sd[key] = sd[key].float() + delta
        vit = build_vit(name)
        load_into(vit, sd, source=str(path))
        if name == "dino":
            vit.norm = nn.Identity()  # DreamSim takes the CLS token before the final norm
        branches.append(Branch(name, vit, proj.float() if proj is not None else None))
        logger.debug("DreamSim %s branch: %s + %d LoRA deltas", name, path, len(deltas[i]))
    return DreamSimModel(branches)
