"""MatMul(W, x) with the constant weight first (token mixing, transposed linear layers, MLP-Mixer).

C = W·x is linear in x (W·mean_t(x_t) = mean_t(W·x_t)) with a constant W: a synaptic layer like x·W.
Checked on x [N, K, S] → MatMul(W1 [M1, K], x) → PQA a → MatMul(W2 [M2, M1], a) → PQA b → y [N, M2, S]:

- folded mode folds the scales into the left weights (W1/θ_a, W2·θ_a/θ_b), with no rescaling Mul
  around either MatMul;
- neither MatMul is a temporal wrapper; their work is synaptic: fan-out of a = M2 (one spike at
  a[n, m, s] drives the column W2[:, m]), ``ann_macs`` = M1·K·S + M2·M1·S, ``static_macs`` the first
  (it reads the network input), and in the run report ``sops`` = spikes · M2, no dense work;
- ``fuzz.check_network`` on both modes (T = 1: exact mode every level and output identical, folded
  mode within the project's tolerance; T > 1: the runtime against the step-by-step reference and
  the running means against rate coding computed from the ANN), and the same for the x·W twin;
- layouts where W·x would contract or move the batch axis are refused, with the reason.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.errors import UnsupportedModelError
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.passes.absorb_threshold_scale import classify
from pmsm_compiler.runtime.report import summarize
from pmsm_compiler.runtime.session import SNNSession
from pmsm_compiler.testing.fuzz import FUZZ_METADATA_KEY, check_network

K, S, M1, M2, L = 6, 5, 8, 4, 8
LAMS = {"a": 2.3, "b": 3.7}
RNG = np.random.default_rng(5)
W1 = (RNG.standard_normal((M1, K)) * 0.6).astype(np.float32)
W2 = (RNG.standard_normal((M2, M1)) * 0.5).astype(np.float32)


def _pqa(x, y, name):
    return helper.make_node("PQA", [x, f"lam_{name}"], [y], name=name, domain="pmsm", L=L, alpha=-0.25, beta=1.0)


def _model(nodes, inits, x_dims, out_dims):
    """x → nodes → y, opset 20, with the quantizers' function bodies."""
    model = helper.make_model(
        helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)], inits),
        opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    return model


def net(left=True, batch="N"):
    """W·x (``left``) or its transposed twin xᵀ·Wᵀ on x [N, S, K] (the same function, transposed)."""
    if left:
        dims, out = [batch, K, S], [batch, M2, S]
        mm = [helper.make_node("MatMul", ["W1", "x"], ["m1"], name="mix1"),
              helper.make_node("MatMul", ["W2", "a"], ["m2"], name="mix2")]
        w = {"W1": W1, "W2": W2}
    else:
        dims, out = [batch, S, K], [batch, S, M2]
        mm = [helper.make_node("MatMul", ["x", "W1"], ["m1"], name="mix1"),
              helper.make_node("MatMul", ["a", "W2"], ["m2"], name="mix2")]
        w = {"W1": W1.T.copy(), "W2": W2.T.copy()}
    nodes = [mm[0], _pqa("m1", "a", "a"), mm[1], _pqa("m2", "y", "b")]
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    inits += [numpy_helper.from_array(np.float32(v), f"lam_{k}") for k, v in LAMS.items()]
    model = _model(nodes, inits, dims, out)
    # the quantizers, as the fuzz generator records them: check_network's T > 1 semantics check needs them
    meta = {"quantizers": [{"input": "m1", "output": "a", "nodes": ["a"]}, {"input": "m2", "output": "y", "nodes": ["b"]}]}
    model.metadata_props.add(key=FUZZ_METADATA_KEY, value=json.dumps(meta))
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def _inputs(n=64, left=True, seed=0):
    x = (np.random.default_rng(seed).standard_normal((n, K, S)) * 1.5).astype(np.float32)
    return x if left else np.ascontiguousarray(x.transpose(0, 2, 1))


def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _inits(model):
    return {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}


def test_classified_as_a_synaptic_layer():
    from pmsm_compiler.onnx_utils import import_graph

    graph = import_graph(net())
    for name in ("mix1", "mix2"):
        assert classify(next(n for n in graph.nodes if n.name == name)) == "weighted"


def test_folded_mode_folds_the_scales_into_the_left_weights():
    folded = compile_model(net(), mode="folded")
    m, new = folded.model, _inits(folded.model)
    a, b = folded.info.layers
    mix1, mix2 = _node(m, "mix1"), _node(m, "mix2")

    def scaled(w, factor):
        return (w.astype(np.float64) * factor).astype(np.float32)

    # network input (scale 1) → a: W1 / θ_a; a → b: W2 · θ_a / θ_b; the weights stay the first operand
    np.testing.assert_array_equal(new[mix1.input[0]], scaled(W1, 1.0 / a.theta_in))
    np.testing.assert_array_equal(new[mix2.input[0]], scaled(W2, a.theta_out / b.theta_in))
    assert not np.array_equal(new[mix2.input[0]], W2)
    # the traffic reaches each MatMul unscaled and the product feeds the neuron directly
    producers = {o: n for n in m.graph.node for o in n.output}
    assert mix1.input[1] == "x" and producers[mix2.input[1]].op_type == "AIF"
    assert [n.op_type for n in m.graph.node if mix2.output[0] in n.input] == ["AIF"]
    assert not [n.name for n in m.graph.node if "synapse_scale" in n.name]


@pytest.mark.parametrize("mode", ["exact", "folded"])
def test_not_wrapped_and_counted_as_synaptic_work(mode):
    compiled = compile_model(net(), mode=mode)
    info = compiled.info
    assert info.wrappers == [] and info.time_input is None
    assert not [n for n in compiled.model.graph.node if n.name.startswith(("mix1/", "mix2/"))]
    a, b = info.layers
    assert a.neurons == M1 * S and b.neurons == M2 * S
    assert a.fan_out == M2  # one spike at a[n, m, s] drives the column W2[:, m]
    assert b.fan_out == 0  # b feeds the graph output only
    assert info.ann_macs == M1 * K * S + M2 * M1 * S
    assert info.static_macs == M1 * K * S  # mix1 reads the network input alone


def test_fan_out_equals_the_transposed_twin():
    """x·W with W [K, P] drives P synapses per spike, W·x with W [M, K] drives M: the twin networks
    (the same function, transposed) have the same fan-outs and MACs."""
    left, right = compile_model(net(left=True)), compile_model(net(left=False))
    assert [l.fan_out for l in left.info.layers] == [l.fan_out for l in right.info.layers] == [M2, 0]
    assert left.info.ann_macs == right.info.ann_macs and left.info.static_macs == right.info.static_macs


def test_run_report_counts_synaptic_operations():
    """The pmsm-run report (``runtime.report.summarize`` over ``SNNSession.run_batch``, as the CLI
    builds it; the CLI's data loaders take images only)."""
    compiled = compile_model(net(), mode="folded")
    result = SNNSession(compiled.model, threads=1).run_batch(_inputs(16), 3)
    report = summarize(compiled.info, result.spikes.sum(axis=1), 16, 3, counters_sum_by_t_layer=result.counters,
                       counter_names=list(compiled.info.counters))
    a, b = report["layers"]
    assert a["fan_out"] == M2 and a["spikes"] > 0
    assert a["sops"] == pytest.approx(a["spikes"] * M2, rel=1e-12)
    work = report["work"]
    assert report["wrappers"] == [] and work["dense_ops"] == 0
    assert work["static_macs"] == M1 * K * S
    assert work["sops"] == pytest.approx(a["sops"] + b["sops"], rel=1e-12)
    assert 0 < work["neuromorphic_share"]["spikes"] < 1


@pytest.mark.parametrize("left", [True, False], ids=["W·x", "x·W"])
def test_exact_at_t1_and_rate_coded_over_t(left):
    """fuzz.check_network: T = 1 parity (exact: identical levels and outputs; folded: flip rate and
    output tolerance), T = 6 consistency and semantics against rate coding of the ANN, verify."""
    results = check_network(net(left=left), _inputs(64, left=left), opt_levels=["disable", "all"], timesteps=6)
    failures = [r for r in results if r.status != "ok"]
    assert not failures, [(r.check, r.mode, r.opt_level, r.status, r.category, r.message[:200]) for r in failures]
    ran = {(r.check, r.mode) for r in results}
    assert {(c, m) for c in ("parity", "consistency", "semantics", "verify") for m in ("exact", "folded")} <= ran


# ------------------------------------------------------------------------------------------
# refusals: layouts whose batch axis would be contracted or moved
# ------------------------------------------------------------------------------------------

def _single(w_shape, x_dims, out_dims, left=True):
    """x → PQA a → MatMul(W, a) (or MatMul(a, W)) → y, with W of ``w_shape``."""
    w = (np.random.default_rng(1).standard_normal(w_shape) * 0.3).astype(np.float32)
    nodes = [_pqa("x", "a", "a"), helper.make_node("MatMul", ["W", "a"] if left else ["a", "W"], ["y"], name="mix")]
    inits = [numpy_helper.from_array(w, "W"), numpy_helper.from_array(np.float32(LAMS["a"]), "lam_a")]
    return onnx.shape_inference.infer_shapes(_model(nodes, inits, x_dims, out_dims), check_type=True,
                                             strict_mode=True)


@pytest.mark.parametrize("w_shape, x_dims, out_dims, message", [
    ((4, 2), [2, 6], [4, 6], r"contracts axis 0 of the rank-2 input 'a', its batch axis"),
    ((3, 4, 5), [3, 5, 2], [3, 4, 2], r"of rank 3 broadcasts against the batch axis of the rank-3 input"),
    ((2, 1, 4, 5), ["N", 5, 2], [2, "N", 4, 2], r"of rank 4 broadcasts against the batch axis of the rank-3"),
], ids=["contracts-batch", "pairs-with-samples", "moves-batch"])
@pytest.mark.parametrize("mode", ["exact", "folded"])
def test_batch_axis_layouts_are_refused(w_shape, x_dims, out_dims, message, mode):
    with pytest.raises(UnsupportedModelError, match=message):
        compile_model(_single(w_shape, x_dims, out_dims), mode=mode)


@pytest.mark.parametrize("w_shape, x_dims, out_dims, message", [
    ((3, 2, 4), [3, 5, 2], [3, 5, 4], r"constant weight second \(x·W\) of rank 3 broadcasts against the batch axis"),
    ((2, 1, 2, 4), ["N", 5, 2], [2, "N", 5, 4], r"constant weight second \(x·W\) of rank 4 broadcasts"),
], ids=["pairs-with-samples", "moves-batch"])
@pytest.mark.parametrize("mode", ["exact", "folded"])
def test_batch_axis_layouts_of_a_weight_second_are_refused(w_shape, x_dims, out_dims, message, mode):
    with pytest.raises(UnsupportedModelError, match=message):
        compile_model(_single(w_shape, x_dims, out_dims, left=False), mode=mode)


@pytest.mark.parametrize("w_shape, x_dims, out_dims", [((2, 4), ["N", 2], ["N", 4]), ((1, 2, 4), ["N", 5, 2], ["N", 5, 4]),
                                                        ((2, 4), ["N", 5, 2], ["N", 5, 4])],
                         ids=["linear", "leading-1", "lower-rank"])
def test_layouts_of_a_weight_second_that_keep_the_batch_axis_compile(w_shape, x_dims, out_dims):
    compiled = compile_model(_single(w_shape, x_dims, out_dims, left=False), mode="folded")
    (a,) = compiled.info.layers
    assert compiled.info.wrappers == [] and a.fan_out == 4


@pytest.mark.parametrize("w_shape", [(4, 5), (5,), (1, 4, 5)], ids=["2-D", "1-D", "leading-1"])
def test_layouts_that_keep_the_batch_axis_compile(w_shape):
    out = [3, *w_shape[:-1][-1:], 2] if len(w_shape) > 1 else [3, 2]
    compiled = compile_model(_single(w_shape, [3, 5, 2], out), mode="folded")
    (a,) = compiled.info.layers
    assert compiled.info.wrappers == [] and a.fan_out == (w_shape[-2] if len(w_shape) > 1 else 1)



def test_a_1d_weight_second_is_counted():
    """x·w with w [K] (a 1-D weight second): K MACs per output element, one synapse per spike (the
    MAC count read W's axis −2 and crashed with an IndexError)."""
    compiled = compile_model(_single((5,), ["N", 3, 5], ["N", 3], left=False), mode="folded")
    (a,) = compiled.info.layers
    assert a.fan_out == 1 and compiled.info.ann_macs == 3 * 5 and compiled.info.wrappers == []
