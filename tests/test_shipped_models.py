"""The trained models shipped in ``pmsm_compiler.models``: model cards, checksums, and the T = 1 contract."""

import hashlib
import json
from importlib import resources

import numpy as np
import onnx
import pytest

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.data import load_bundled_sample, normalize
from pmsm_compiler.data.prepare import resolve_normalization
from pmsm_compiler.loading import load_model
from pmsm_compiler.metadata import get_metadata
from pmsm_compiler.runtime import SNNSession
from pmsm_compiler.sessions import make_session
from pmsm_compiler.snn_format import EXPORT_METADATA_KEY

SHIPPED = sorted(p.name for p in resources.files("pmsm_compiler.models").iterdir() if p.name.endswith(".onnx"))


def card(name):
    path = resources.files("pmsm_compiler.models") / (name[:-len(".onnx")] + ".json")
    assert path.is_file(), f"{name} has no model card"
    return json.loads(path.read_text())


def total_epochs(c) -> int:
    """The epochs behind a shipped model: its own run's and, for a fine-tune, every stage it started from."""
    from pmsm_compiler.models import training_stages

    return sum(training_stages(c))


def test_the_default_pqa_model_is_shipped():
    assert "resnet20_pqa_cifar10.onnx" in SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_model_card_is_complete_and_checksum_matches(name):
    c = card(name)
    data = (resources.files("pmsm_compiler.models") / name).read_bytes()
    assert c["file"] == name
    assert c["sha256"] == hashlib.sha256(data).hexdigest()
    assert "JPEG" in c["data"]["note"]
    training = c["training"]
    assert training["command"].startswith("pmsm-train ") and f"--seed {training['seed']}" in training["command"]
    assert total_epochs(c) >= 15 and training["wall_time_s"] > 0
    assert 0.5 < c["ann_accuracy_onnxruntime"] <= 1.0
    # the repository's limit for a file; a larger model ships its weights as float16 (bench/ship_model.py
    # --weights-float16), and then its card says so
    assert len(data) < 5 * 2**20
    if c.get("weights_storage"):
        model = load_model(str(resources.files("pmsm_compiler.models") / name))
        stored = get_metadata(model, EXPORT_METADATA_KEY)["weights_float16"]
        halves = [i for i in model.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
        assert len(stored) == len(halves) == c["weights_storage"]["float16_tensors"] > 0


@pytest.mark.parametrize("name", [n for n in SHIPPED if card(n)["activation"]["kind"] == "pqa"])
def test_shipped_pqa_model_is_lossless_at_t1(name):
    ann = load_model(str(resources.files("pmsm_compiler.models") / name))
    compiled = compile_model(ann, mode="exact")
    mean, std = resolve_normalization("auto", compiled.info)
    x = normalize(load_bundled_sample().x[:64], mean, std)
    logits = make_session(ann).run(None, {compiled.info["inputs"][0]["name"]: x})[0]
    result = SNNSession(compiled.model).run_batch(x, 1)
    assert np.array_equal(result.mean_outputs, logits)
    assert np.array_equal(result.predictions_by_t[0], logits.argmax(1))
