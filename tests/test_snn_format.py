"""The compiled SNN's record (pmsm_compiler.snn_format): one definition, documented, read back as written.

- docs/snn-format.md lists every key of every record, no other, and marks optional exactly the keys
  the module leaves out when absent;
- a compiled model's JSON reads into the records and writes back identically (keys and order);
- a record written by an older compiler (no counters, no input dtype, no wrapper tensors) still
  reads, and writes back without gaining keys; unknown keys survive; a newer version or a malformed
  record is refused in one line;
- no live graph object reaches the record (passes keep their nodes in the PassContext).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.errors import InputError
from pmsm_compiler.metadata import get_metadata, set_metadata
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.neurons import INITIAL_MEMBRANES
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.snn_format import (FORMAT_VERSION, SNN_METADATA_KEY, DataInput, NeuronLayer, SNNInfo, State, Wrapper,
                                      documented_keys, read_snn_info)

DOC = Path(__file__).resolve().parents[1] / "docs" / "snn-format.md"
RECORDS = {"SNNInfo": SNNInfo, "DataInput": DataInput, "State": State, "Wrapper": Wrapper, "NeuronLayer": NeuronLayer}


def _documented_tables() -> dict[str, dict[str, bool]]:
    """{record: {key: documented as optional}} from the '### `Record`' tables of the Metadata section."""
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("\n## Metadata"):]
    section = section[:section.index("\n## ", 1)]
    tables = {}
    for block in re.split(r"\n### ", section)[1:]:
        name = re.match(r"`(\w+)`", block).group(1)
        keys = {}
        for line in block.splitlines():
            cells = line.split("|")
            if len(cells) < 3 or not cells[1].strip().startswith("`"):
                continue
            optional = cells[2].strip().startswith("*optional*")
            for key in re.findall(r"`(\w+)`", cells[1]):
                keys[key] = optional
        tables[name] = keys
    return tables


def test_docs_list_every_key_of_every_record_and_no_other():
    documented = _documented_tables()
    assert set(documented) == set(RECORDS)
    for name, keys in documented_keys().items():
        assert set(documented[name]) == keys, (name, set(documented[name]) ^ keys)


def test_docs_mark_optional_exactly_the_keys_an_old_file_may_lack():
    for name, keys in _documented_tables().items():
        optional = {k for k, opt in keys.items() if opt}
        assert optional == set(RECORDS[name]._OPTIONAL), name


def test_docs_state_the_format_version():
    assert f"(format version {FORMAT_VERSION})" in DOC.read_text(encoding="utf-8").splitlines()[0]


@pytest.fixture(scope="module")
def compiled():
    """y = PQA_a(x) · PQA_b(x) (two neuron layers, a two-input temporal wrapper that needs the time
    input), folded mode."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])
    nodes = [helper.make_node("PQA", ["x", lam], [q], domain="pmsm", name=q, L=4, alpha=-0.25, beta=1.0)
             for q, lam in (("qa", "lam_a"), ("qb", "lam_b"))] + [helper.make_node("Mul", ["qa", "qb"], ["y"])]
    inits = [numpy_helper.from_array(np.float32(v), k) for k, v in (("lam_a", 2.0), ("lam_b", 4.0))]
    model = helper.make_model(helper.make_graph(nodes, "product", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    compiled = compile_model(onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True))
    assert compiled.info.wrappers and compiled.info.time_input and len(compiled.info.layers) == 2
    return compiled


def test_compiled_record_reads_back_as_written(compiled):
    raw = get_metadata(compiled.model, SNN_METADATA_KEY)
    info = read_snn_info(compiled.model)
    assert isinstance(info, SNNInfo) and info == compiled.info
    assert json.dumps(info.to_json()) == json.dumps(raw)  # the same keys in the same order
    assert all(isinstance(s, State) for s in info.states) and all(isinstance(w, Wrapper) for w in info.wrappers)
    assert all(isinstance(layer, NeuronLayer) for layer in info.layers)


def test_record_holds_no_graph_objects(compiled):
    def walk(value):
        if isinstance(value, dict):
            for k, v in value.items():
                assert not k.startswith("_"), k
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert value is None or isinstance(value, (str, int, float, bool)), type(value)

    walk(compiled.info.to_json())


def test_membranes_start_at_the_neuron_ops_initial_value(compiled):
    ops = {layer.name: layer.op for layer in compiled.info.layers}
    for state in compiled.info.states:
        if state.kind == "membrane":
            assert state.init == INITIAL_MEMBRANES[ops[state.layer]]
        else:
            assert state.init == 0.0 and state.wrapper


OLD_RECORD = {  # as the first compilers wrote it: no counters, no input dtype, no wrapper tensors, fewer layer keys
    "format": "pmsm-snn", "format_version": 1, "compiler_version": "0.0.9", "mode": "folded",
    "inputs": [{"name": "input", "shape": ["batch", 3, 8, 8]}], "outputs": ["logits"],
    "spike_counts_output": "pmsm_spike_counts", "time_input": None,
    "states": [{"input": "a.u", "output": "a.u_next", "init": 0.5, "kind": "membrane", "layer": "a"},
               {"input": "p.sum0", "output": "p.sum0_next", "init": 0.0, "kind": "input_sum", "wrapper": "p"},
               {"input": "p.prev", "output": "p.value", "init": 0.0, "kind": "cumulative_output", "wrapper": "p"}],
    "layers": [{"name": "a", "kind": "PQA", "neuron": "AIF", "s_min": -2, "s_max": 8, "levels": 8, "lam": 2.0,
                "theta": 0.25, "theta_out": 0.25, "source": "pmsm::PQA", "ann_output": "a_out",
                "spike_tensor": "a_out", "state_in": "a.u", "state_out": "a.u_next", "shape": [4, 8, 8],
                "neurons": 256, "fan_out": 9.0}],
    "wrappers": [{"name": "p", "op": "MaxPool", "homogeneous": True, "states": ["p.sum0", "p.prev"]}],
    "ann_macs": 1000, "notes": [], "pass_seconds": {}, "compile_seconds": 0.1,
}


def _with_record(record) -> onnx.ModelProto:
    graph = helper.make_graph([], "g", [], [])
    model = helper.make_model(graph)
    set_metadata(model, SNN_METADATA_KEY, record)
    return model


def test_an_old_record_still_reads_and_writes_back_unchanged():
    info = read_snn_info(_with_record(OLD_RECORD))
    assert info.counters_output is None and info.counters is None and info.inputs[0].dtype is None
    assert info.wrappers[0].value is None and info.layers[0].count_index is None
    assert "counters_output" not in info and "dtype" not in info.inputs[0]
    assert info["layers"][0]["theta"] == 0.25 and info.get("normalization") is None
    assert info.to_json() == OLD_RECORD


def test_unknown_keys_survive_a_round_trip():
    record = json.loads(json.dumps(OLD_RECORD))
    record["future_key"] = {"a": 1}
    record["layers"][0]["future_layer_key"] = 3
    info = read_snn_info(_with_record(record))
    assert info.to_json() == record and info["future_key"] == {"a": 1}


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(format_version=FORMAT_VERSION + 1), "unsupported compiled-model format pmsm-snn v2"),
    (lambda r: r.update(format="other"), "unsupported compiled-model format other"),
    (lambda r: r.pop("layers"), "lacks 'layers'"),
    (lambda r: r.update(states={}), "'states' is dict, expected a list"),
    (lambda r: r["states"].append(3), r"states\[3\] is int"),
    (lambda r: r["states"][0].pop("init"), r"states\[0\] lacks 'init'"),
    (lambda r: r.update(inputs=[]), "no data input"),
    (lambda r: r["states"][1].update(kind="velocity"), r"states\[1\] has kind 'velocity'"),
])
def test_a_record_this_version_cannot_read_is_refused_in_one_line(edit, message):
    record = json.loads(json.dumps(OLD_RECORD))
    edit(record)
    with pytest.raises(InputError, match=message) as exc:
        read_snn_info(_with_record(record))
    assert "\n" not in str(exc.value)


def test_a_model_without_a_record_has_none():
    model = helper.make_model(helper.make_graph([], "g", [], [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                                                                            [1])]))
    assert read_snn_info(model) is None
