"""The plugin computes what the original ``dreamsim`` package computes, from the same files.

Needs the test extra (``dreamsim==0.2.1``, which brings peft, transformers and
open_clip). The package fetches DINO through torch hub: the test supplies the hub repo
(a ``hubconf.py`` building DINO's ViT-B/16 from DreamSim's verbatim copy of DINO's
``vision_transformer.py``) and the hub checkpoint, so nothing is downloaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from cbirlib_dreamsim import DreamSimExtractor
from dreamsim_fixtures import weights_cache  # noqa: F401 (a fixture)

from cbirlib.preprocess import prepare_slices

HUBCONF = """
import torch
from dreamsim.feature_extraction.vision_transformer import vit_base

def dino_vitb16(pretrained=True, **kwargs):
    model = vit_base(patch_size=16, num_classes=0, **kwargs)
    url = "https://dl.fbaipublicfiles.com/dino/dino_vitbase16_pretrain/dino_vitbase16_pretrain.pth"
    model.load_state_dict(torch.hub.load_state_dict_from_url(url, map_location="cpu"))
    return model
"""


@pytest.fixture(scope="module")
def package_cache(weights_cache: Path) -> Iterator[Path]:
    """The test cache plus what only the package reads: DINO's hub repo and head."""
    repo = weights_cache / "facebookresearch_dino_main"
    repo.mkdir(exist_ok=True)
    (repo / "hubconf.py").write_text(HUBCONF)
    head = {
        "module.head.mlp.0.weight": torch.zeros(2048, 768),
        "module.head.mlp.0.bias": torch.zeros(2048),
        "module.head.mlp.2.weight": torch.zeros(2048, 2048),
        "module.head.mlp.2.bias": torch.zeros(2048),
        "module.head.mlp.4.weight": torch.zeros(256, 2048),
        "module.head.mlp.4.bias": torch.zeros(256),
        "module.head.last_layer.weight": torch.zeros(65536, 256),
    }
    torch.save({"student": head}, weights_cache / "dino_vitb16_pretrain.pth")
    hub_dir = torch.hub.get_dir()
    yield weights_cache
    torch.hub.set_dir(hub_dir)  # the package sets it to its cache_dir


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    """Two CT-like slices preprocessed as the extractor does: (2, 3, 224, 224) in [0, 1]."""
    rng = np.random.default_rng(1)
    raw = torch.from_numpy(rng.normal(0, 400, size=(2, 64, 64)).astype(np.float32))
    cfg = DreamSimExtractor(device="cpu").input_config
    return prepare_slices(raw, cfg, bounds=(-1000.0, 1000.0))


# warnings of the original package itself: its DINO head (unused by the ensemble's
# embedding) uses the old weight_norm; it wraps the model with peft twice
@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated:FutureWarning")
@pytest.mark.filterwarnings("ignore:Already found a `peft_config` attribute:UserWarning")
def test_same_as_dreamsim_package(package_cache: Path, images: torch.Tensor) -> None:
    """The ensemble (default) variant; dino_vitb16 is its first branch with another adapter."""
    from dreamsim import dreamsim

    reference, _ = dreamsim(
        pretrained=True, device="cpu", cache_dir=str(package_cache), dreamsim_type="ensemble"
    )
    ours = DreamSimExtractor(cache_dir=package_cache, device="cpu").model
    with torch.no_grad():
        ref = reference.embed(images)  # centred and unit-norm (normalize_embeds=True)
        emb = torch.nn.functional.normalize(ours(images), dim=1)
    assert emb.shape == ref.shape == (2, 1792)
    torch.testing.assert_close(emb, ref, rtol=0, atol=2e-5)
    # DreamSim's distance (PerceptualModel.forward) is 1 - cosine of these embeddings
    ref_distance = 1 - torch.nn.functional.cosine_similarity(ref[:1], ref[1:])
    torch.testing.assert_close(1 - emb[:1] @ emb[1:].T, ref_distance[None], rtol=0, atol=2e-5)
    assert float(ref_distance) > 1e-3  # the two slices differ: the check can fail
