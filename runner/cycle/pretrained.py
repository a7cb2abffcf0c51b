"""Starting from given weights: torchvision's published ones (``pretrained: true``) or any state
dict file (``dense_path``), torchvision's own format included, loaded into a model built for the
data set.

Published weights are read from torchvision's own cache, ``torch.hub.get_dir()/checkpoints/``
(``$TORCH_HOME/hub/checkpoints``), under the file name torchvision gives them; they are
downloaded there only when the user allows it (``download``). torchvision names each file by the
first hex digits of its sha256 (``vgg16-397923af.pth``): a cached file whose digest does not
begin with them is refused, never loaded, and the digest keys the dense stage, so every sweep
from the same weights shares it.

A data set with other classes than the weights' (ImageNet's 1,000 -> CIFAR-10's 10) leaves the
classifier (the model's last linear layer) without weights, and one with other channels leaves
the first conv: those keep the model's own seeded initialisation and are named
(``pretrained_reinitialised``). Any other difference, a tensor missing, unexpected or of another
shape, is refused in one line that lists the tensors.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from .config import ConfigError, CycleConfig
from .models import TORCHVISION_MODELS, torchvision_core

#: A state dict file may hold at most this many times the model's own float32 bytes, plus
#: SLACK_BYTES: ImageNet's 1,000-class head on a 10-class model adds 3% to VGG-16 and 4% to
#: ResNet-18, so 2x admits every real file while a huge file is refused before it is read.
MAX_FILE_FACTOR = 2
SLACK_BYTES = 64 << 20
#: A cached file may exceed torchvision's published size by this factor: the same tensors saved
#: by a newer torch take a few percent more (ResNet-18's 44.7 MB file is 46.8 MB re-saved).
PUBLISHED_SLACK = 1.25
#: torchvision's file names: ``<arch>-<first hex digits of the sha256>.pth``.
_HASH_PREFIX = re.compile(r"-([a-f0-9]{6,64})\.")
_HASH_CHUNK = 8 << 20
#: What torch.load raises on a file that is not a plain state dict of tensors.
_LOAD_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError, AttributeError, EOFError,
                pickle.UnpicklingError)


@dataclass(frozen=True)
class Published:
    """torchvision's DEFAULT weights for one architecture, and where its cache keeps them."""

    model: str
    weights: str  # the enum's name, e.g. "VGG16_Weights.IMAGENET1K_V1"
    url: str
    file: Path
    max_bytes: int  # torchvision's published size, with PUBLISHED_SLACK to spare

    @property
    def hash_prefix(self) -> str | None:
        found = _HASH_PREFIX.search(self.file.name)
        return found.group(1) if found else None


def published(model: str) -> Published:
    """The DEFAULT weights torchvision publishes for ``model`` (one of TORCHVISION_MODELS)."""
    if model not in TORCHVISION_MODELS:
        raise ConfigError(f"pretrained=True is not allowed for model={model!r}; torchvision publishes weights "
                          f"for {list(TORCHVISION_MODELS)}")
    import torchvision

    weights = torchvision.models.get_model_weights(model).DEFAULT
    file = Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name
    size = int(float(weights.meta.get("_file_size", 0)) * 1e6 * PUBLISHED_SLACK) + (1 << 20)
    return Published(model, f"{type(weights).__name__}.{weights.name}", weights.url, file, size)


def weights_file(model: str, download: bool) -> Path:
    """The cached file of ``model``'s published weights; downloaded first when it is missing and
    ``download`` allows it, else refused in one line that names the file and how to get it."""
    pub = published(model)
    if pub.file.is_file():
        return pub.file
    if not download:
        raise ConfigError(f"pretrained=True needs torchvision's {pub.weights} for {model} at {pub.file} (the "
                          f"cache under TORCH_HOME), which is missing; allow the download (download: true / "
                          f"--download) or put {pub.url} there")
    pub.file.parent.mkdir(parents=True, exist_ok=True)
    try:  # into a temporary file, moved into place once its sha256 prefix checks out
        torch.hub.download_url_to_file(pub.url, str(pub.file), hash_prefix=pub.hash_prefix, progress=False)
    except (OSError, RuntimeError) as exc:
        raise ConfigError(f"pretrained=True: downloading {pub.url} to {pub.file} failed: {exc}") from None
    return pub.file


def published_digest(model: str, download: bool) -> str:
    """The sha256 of ``model``'s cached published weights, checked against the digits
    torchvision's file name gives (a damaged or replaced file is refused)."""
    pub = published(model)
    file = weights_file(model, download)
    size = file.stat().st_size
    if size > pub.max_bytes:
        raise ConfigError(f"pretrained=True: {file} holds {size} bytes, more than torchvision's {pub.weights} "
                          f"({pub.max_bytes}); remove it and download it again")
    stat = file.stat()
    digest = _cached_digest(str(file), stat.st_size, stat.st_mtime_ns)
    if pub.hash_prefix and not digest.startswith(pub.hash_prefix):
        raise ConfigError(f"pretrained=True: {file} has sha256 {digest[:12]}..., not the {pub.hash_prefix}... "
                          f"its name says: damaged or not torchvision's; remove it and download it again")
    return digest


@functools.lru_cache(maxsize=8)
def _cached_digest(path: str, size: int, mtime_ns: int) -> str:
    """A published file's digest, hashed once per process while it stays as it was (the check
    before a run and the run itself read the same 500 MB)."""
    return file_digest(Path(path))


def check_weights(cfg: CycleConfig) -> None:
    """Refuse now (ConfigError) a pretrained start whose weights are missing without leave to
    download them, or damaged; download them now when allowed: before anything starts."""
    if cfg.pretrained:
        published_digest(cfg.model, cfg.download)


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_state(path: Path, model: nn.Module, source: str) -> dict[str, torch.Tensor]:
    """A state dict of tensors from ``path``, its size bounded by ``model``'s before it is read;
    ``weights_only``: never arbitrary pickled objects. ``source`` names it in errors
    (``dense_path='...'``)."""
    limit = MAX_FILE_FACTOR * sum(t.numel() * 4 for t in model.state_dict().values()) + SLACK_BYTES
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ConfigError(f"{source} cannot be read: {exc}") from None
    if size > limit:
        raise ConfigError(f"{source} holds {size} bytes, more than {MAX_FILE_FACTOR}x this model's "
                          f"weights allow ({limit}); give a state dict of the same architecture")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except _LOAD_ERRORS as exc:
        try:  # mmap needs torch's zip format; the legacy format is still a state dict
            state = torch.load(path, map_location="cpu", weights_only=True)
        except _LOAD_ERRORS:
            reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
            raise ConfigError(f"{source} is not a state dict for this model: {reason}") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        raise ConfigError(f"{source} is not a state dict for this model (a mapping from names to tensors); "
                          f"got {type(state).__name__}")
    return state


def load_state_(model: nn.Module, state: dict[str, torch.Tensor], source: str, apply: bool = True) -> list[str]:
    """Load ``state`` (the model's own names, or torchvision's for a torchvision architecture)
    into ``model``; returns the layers left at their initialisation (the classifier, the first
    conv) in the model's names. Any other difference is refused. ``apply=False`` only checks."""
    target, prefix = model, ""
    core = torchvision_core(model)
    if core is not None and not set(state) & set(model.state_dict()):  # torchvision's own names
        target, prefix = core, "model."
    own = target.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    differ = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    replaceable = _replaceable(target)
    reinit = sorted({_module(k) for k in differ + missing if _module(k) in replaceable})
    missing, differ = ([k for k in names if _module(k) not in reinit] for names in (missing, differ))
    if missing or differ or unexpected:
        raise ConfigError(f"{source} does not fit this model: {_listing(missing, unexpected, differ, own, state)}; "
                          f"only the classifier and the first conv may differ (the data set's classes and "
                          f"channels)")
    if apply:
        kept = {k: v for k, v in state.items() if _module(k) not in reinit}
        target.load_state_dict(kept, strict=False)
    return [prefix + name for name in reinit]


def _replaceable(model: nn.Module) -> set[str]:
    """The layers a data set's classes and channels decide: the last linear layer and the
    first conv."""
    linear = [name for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    conv = [name for name, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    return set(linear[-1:] + conv[:1])


def _module(tensor_name: str) -> str:
    return tensor_name.rpartition(".")[0]


def _listing(missing: list[str], unexpected: list[str], differ: list[str], own: dict[str, torch.Tensor],
             state: dict[str, torch.Tensor], most: int = 6) -> str:
    parts = []
    if missing:
        parts.append(f"missing {missing[:most]}{' ...' if len(missing) > most else ''}")
    if unexpected:
        parts.append(f"unexpected {unexpected[:most]}{' ...' if len(unexpected) > most else ''}")
    if differ:
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in differ[:most]]
        parts.append(f"other shapes (file vs model) [{', '.join(shapes)}]{' ...' if len(differ) > most else ''}")
    return "; ".join(parts)
