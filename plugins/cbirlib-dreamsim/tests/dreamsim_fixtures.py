"""Helpers: a DreamSim weights cache written by the tests, offline.

The files have the exact layout, key names and shapes of DreamSim's published files
(the dreamsim package loads them strictly in ``test_reference.py``), filled with seeded
random values: they stand in for the real weights, which cannot be downloaded here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cbirlib_dreamsim.files import BRANCH_FILES, VARIANTS
from cbirlib_dreamsim.model import build_vit

R, ALPHA = 16, 0.5  # DreamSim's published LoRA settings


def random_backbone(branch: str, seed: int) -> dict[str, torch.Tensor]:
    """A ViT-B/16 state dict in the published file's key names, seeded random values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for key, ref in build_vit(branch, device="meta").state_dict().items():
        x = torch.randn(ref.shape, generator=g)
        module, _, param = key.rpartition(".")
        is_norm = module.rpartition(".")[2].startswith("norm")
        sd[key] = 1.0 + 0.1 * x if is_norm and param == "weight" else 0.02 * x
    if branch != "dino":
        # CLIP-as-DINO checkpoints call the pre-blocks LayerNorm pos_drop
        sd = {k.replace("norm_pre.", "pos_drop.", 1): v for k, v in sd.items()}
        sd["proj"] = torch.randn(768, 512, generator=g) / 768**0.5
    return sd


def random_adapter(n_branches: int, seed: int) -> dict[str, torch.Tensor]:
    """LoRA A/B for every qkv, keys as peft saves them for dreamsim's PerceptualModel.

    B is far from peft's zero init so that the merge visibly changes the model.
    """
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for i in range(n_branches):
        for j in range(12):
            key = f"base_model.model.extractor_list.{i}.model.blocks.{j}.attn.qkv"
            sd[f"{key}.lora_A.weight"] = 0.02 * torch.randn(R, 768, generator=g)
            sd[f"{key}.lora_B.weight"] = torch.randn(3 * 768, R, generator=g)
    return sd


ADAPTER_CONFIG = {
    "peft_type": "LORA",
    "r": R,
    "lora_alpha": ALPHA,
    "lora_dropout": 0.3,
    "bias": "none",
    "target_modules": ["qkv"],
    "fan_in_fan_out": False,
    "use_rslora": False,
    "use_dora": False,
    "rank_pattern": {},
    "alpha_pattern": {},
    "inference_mode": True,
    "task_type": None,
    "base_model_name_or_path": None,
}


def write_adapter(root: Path, variant: str, seed: int) -> None:
    v = VARIANTS[variant]
    folder = root / v.adapter
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps(ADAPTER_CONFIG))
    save_file(random_adapter(len(v.branches), seed), str(folder / "adapter_model.safetensors"))


def link_cache(src: Path, dst: Path, *, skip: tuple[str, ...] = ()) -> Path:
    """A copy of cache ``src`` made of symlinks, without the relative paths in ``skip``."""
    for path in src.rglob("*"):
        rel = path.relative_to(src)
        if path.is_file() and rel.as_posix() not in skip:
            (dst / rel).parent.mkdir(parents=True, exist_ok=True)
            (dst / rel).symlink_to(path)
    return dst


@pytest.fixture(scope="session")
def weights_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache with both variants: the three backbones and both adapters."""
    root = tmp_path_factory.mktemp("dreamsim-cache")
    (root / "checkpoints").mkdir()
    torch.save(random_backbone("dino", 1), root / BRANCH_FILES["dino"])
    for seed, branch in enumerate(("clip", "open_clip"), start=2):
        torch.save({"state_dict": random_backbone(branch, seed)}, root / BRANCH_FILES[branch])
    write_adapter(root, "ensemble", 10)
    write_adapter(root, "dino_vitb16", 11)
    return root
