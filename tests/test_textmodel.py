"""The embedding engines behind classify: the numpy BERT encoder and joined models."""

import json
from pathlib import Path

import numpy as np
import pytest

from app.speech.errors import ModelNotInstalled
from app.textmodel import Bert, Joined, TextModelError, load_embedder

REPO = Path(__file__).resolve().parent.parent
MODELS = REPO / "speech_models"
REFERENCE = json.loads((Path(__file__).parent / "data" / "minilm_reference.json").read_text())


@pytest.fixture(scope="module")
def joined():
    """Load e5-small and all-MiniLM-L6-v2 side by side, as the app does by default."""
    return load_embedder("e5-small+minilm-l6", MODELS)


def test_the_numpy_encoder_reproduces_sentence_transformers(joined):
    """Each reference vector was made by sentence-transformers from the same files."""
    minilm = joined.parts[1]
    vectors = minilm.embed(REFERENCE["texts"])
    expected = np.array(REFERENCE["vectors"], dtype=np.float32)
    assert vectors.shape == expected.shape == (len(REFERENCE["texts"]), 384)
    assert np.abs(vectors - expected).max() < 1e-5
    assert vectors.dtype == np.float32


def test_joined_embeddings_are_each_model_side_by_side(joined):
    texts = ["I fell in the kitchen", "could someone do my shopping", "", "\ud800 nul\0 here"]
    e5, minilm = joined.parts
    together = joined.embed(texts)
    assert (joined.name, joined.dim) == ("e5-small+minilm-l6", e5.dim + minilm.dim)
    assert together.shape == (4, 768)
    half = np.float32(0.5**0.5)
    assert np.allclose(together[:, : e5.dim], e5.embed(texts) * half, atol=1e-7)
    assert np.allclose(together[:, e5.dim :], minilm.embed(texts) * half, atol=1e-7)
    assert np.allclose(np.linalg.norm(together, axis=1), 1.0, atol=1e-5)
    assert joined.embed([]).shape == (0, 768)


def test_joined_embeddings_stay_right_when_requests_arrive_together(joined):
    """Web requests classify on many threads at once; each gets its own text's embedding."""
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"please could someone help me with {thing}" for thing in ("shopping", "my tap")] * 4
    alone = joined.embed(texts)
    with ThreadPoolExecutor(4) as pool:
        together = list(pool.map(lambda t: joined.embed([t])[0], texts))
    assert np.allclose(np.array(together), alone, atol=1e-6)


def test_an_over_long_text_is_cut_at_the_encoders_limit(joined):
    minilm = joined.parts[1]
    long = " ".join(["my garden gate is broken"] * 400)
    assert np.isclose(np.linalg.norm(minilm.embed([long])[0]), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    ("name", "error", "message"),
    [
        ("e5-small+bert-huge", TextModelError, "no embedding engine for 'bert-huge'"),
        ("minilm-l6+minilm-l6", TextModelError, "names a model twice"),
        ("e5-small+minilm-l6", ModelNotInstalled, "models install minilm-l6"),
    ],
)
def test_a_bad_text_model_name_is_named(models_dir, name, error, message):
    folder = models_dir({"e5-small": "installed"})
    with pytest.raises(error, match=message):
        load_embedder(name, folder)


@pytest.mark.parametrize(
    ("rel", "content", "message"),
    [
        ("tokenizer.json", b"{not json", "cannot load the BERT model"),
        ("config.json", b'{"model_type": "gpt2"}', "not a mean-pooled BERT"),
        ("model.safetensors", b"\x02\0\0\0\0\0\0\0{}", "model.safetensors lacks"),
        ("model.safetensors", b"", "cannot load the BERT model"),
        ("model.safetensors", b"\0" * 7 + b"\x40" + b"{}", "claims 4611686018427387904 bytes"),
    ],
)
def test_a_damaged_bert_folder_is_a_text_model_error(tmp_path, rel, content, message):
    folder = tmp_path / "minilm-l6"
    for real in (MODELS / "minilm-l6").rglob("*"):
        if real.is_file():
            (folder / real.relative_to(MODELS / "minilm-l6")).parent.mkdir(
                parents=True, exist_ok=True
            )
            (folder / real.relative_to(MODELS / "minilm-l6")).symlink_to(real.resolve())
    (folder / rel).unlink()
    (folder / rel).write_bytes(content)
    with pytest.raises(TextModelError, match=message):
        Bert(folder)


def test_a_single_name_loads_that_model_alone():
    assert not isinstance(load_embedder("minilm-l6", MODELS), Joined)
