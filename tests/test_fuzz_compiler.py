"""The differential fuzzer (``pmsm_compiler.testing.fuzz``) and the step-by-step reference
(``pmsm_compiler.testing.reference``).

1. The reference against SNNs computed by hand: exact arithmetic (fractions) of the AIF neuron
   (u(0) = ½, m = u + I, k = clip(floor(m), s_min, s_max), u = m − k) and of the temporal wrapper
   (running mean of the output = f(running means of the inputs)). The inputs are binary fractions,
   so every float32 value of the linear net is exact: its spikes, outputs, running means and
   predictions are checked exactly; the wrapper's t·f(S/t) rounds, so its outputs are checked to
   1e-6. The data are chosen so that the checks fail if predictions came from the current step
   instead of the running mean, if the mean were not divided by T, if the time input were 1 at
   every step, or if a two-input wrapper averaged only one input.
2. The generator: deterministic per seed, valid ONNX that onnxruntime runs, every op of the
   loader's allowlist placed when asked for.
3. A fixed-seed slice of the fuzzer (``SLICE`` graphs, both modes, opt levels disable and all,
   T ≤ 4, the CLI on every 10th graph): any failure other than a clean refusal fails its test,
   with the replay command in the message.
"""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from pmsm_compiler.compiler import compile_model
from pmsm_compiler.loading import DEFAULT_ALLOWED_OPS
from pmsm_compiler.ops import add_functions
from pmsm_compiler.ops.quantizers import quantizer_functions
from pmsm_compiler.runtime import SNNSession
from pmsm_compiler.testing import fuzz
from pmsm_compiler.testing.reference import initial_value, run_rate_coded_ann, run_reference

T = 4
S_MIN, S_MAX = -1, 4  # PQA L = 4, α = −¼, β = 1
# Input currents in threshold units (θ = ½), per sample and neuron: binary fractions.
CURRENTS = [[Fraction(25, 8), Fraction(31, 8)], [Fraction(-3), Fraction(33, 8)], [Fraction(5, 4), Fraction(5, 8)]]
THETA = Fraction(1, 2)
X = np.array([[float(c * THETA) for c in row] for row in CURRENTS], np.float32)
# Spikes of the two neurons of each sample at t = 1..4, worked out by hand from CURRENTS
# (sample 1, neuron 0 sits at the lower bound with a falling membrane; sample 1, neuron 1 is
# clipped to 4 at t = 4):
SPIKES = np.array([[[3, 3, 3, 4], [4, 4, 4, 4]],
                   [[-1, -1, -1, -1], [4, 4, 4, 4]],
                   [[1, 2, 1, 1], [1, 0, 1, 1]]])
W = [[Fraction(-3, 4), Fraction(1, 4), Fraction(-1)], [Fraction(-1), Fraction(-1), Fraction(1)]]


def aif(currents, steps=T, s_min=S_MIN, s_max=S_MAX):
    """The AIF neuron in exact arithmetic: spike counts k(1..steps)."""
    u, ks = Fraction(1, 2), []
    for _ in range(steps):
        m = u + currents
        k = max(s_min, min(s_max, math.floor(m)))
        u = m - k
        ks.append(k)
    return ks


def argmax(values):
    return max(range(len(values)), key=lambda j: values[j])


def build(nodes, inits, out_width, name):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_width])
    graph = helper.make_graph(nodes, name, [x], [y],
                              [numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10
    add_functions(model, quantizer_functions())
    onnx.checker.check_model(model, full_check=True)
    return onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)


def pqa(x, y, lam):
    return helper.make_node("PQA", [x, lam], [y], domain="pmsm", name=y, L=4, alpha=-0.25, beta=1.0)


@pytest.fixture(scope="module")
def linear_snn():
    """x → PQA (λ = 2, L = 4: θ = ½) → MatMul W → y, exact mode."""
    ann = build([pqa("x", "q", "lam"), helper.make_node("MatMul", ["q", "W"], ["y"])],
                {"lam": 2.0, "W": [[float(w) for w in row] for row in W]}, 3, "linear")
    return compile_model(ann, mode="exact")


@pytest.fixture(scope="module")
def product_snn():
    """y = PQA_a(x) · PQA_b(x) (λ_a = 2, λ_b = 4: θ_a = ½, θ_b = 1): a two-input temporal
    wrapper that needs the time input."""
    ann = build([pqa("x", "qa", "lam_a"), pqa("x", "qb", "lam_b"), helper.make_node("Mul", ["qa", "qb"], ["y"])],
                {"lam_a": 2.0, "lam_b": 4.0}, 2, "product")
    return compile_model(ann, mode="exact")


def test_hand_spikes_follow_the_neuron():
    assert [[aif(c) for c in row] for row in CURRENTS] == SPIKES.tolist()


def test_reference_linear_snn_by_hand(linear_snn):
    info = linear_snn.info
    assert [s["kind"] for s in info["states"]] == ["membrane"] and info["time_input"] is None
    ref = run_reference(linear_snn, X, T, opt_level="disable", keep_levels=True)
    counts = np.abs(SPIKES).sum(axis=1).T[:, :, None]  # [T, N, 1 layer]
    assert np.array_equal(ref.spikes, counts) and np.array_equal(ref.spikes_recomputed, counts)
    assert ref.spikes.dtype == np.int64 and not ref.non_integer_spikes
    assert np.array_equal(np.stack([lv[0] for lv in ref.levels_by_t]), SPIKES.transpose(2, 0, 1))
    distinct_predictions = 0
    for n in range(len(CURRENTS)):
        total = [Fraction(0)] * 3
        for t in range(T):
            q = [SPIKES[n, i, t] * THETA for i in range(2)]
            y = [sum(q[i] * W[i][j] for i in range(2)) for j in range(3)]
            total = [a + b for a, b in zip(total, y)]
            mean = [v / (t + 1) for v in total]
            assert ref.outputs_by_t[t, n].tolist() == [float(v) for v in y]  # exact binary fractions
            assert ref.mean_by_t[t, n].tolist() == pytest.approx([float(v) for v in mean], rel=1e-15, abs=0)
            assert ref.predictions_by_t[t, n] == argmax(mean)
            distinct_predictions += argmax(mean) != argmax(y)
        assert ref.mean_outputs[n].tolist() == [float(np.float32(float(v / T))) for v in total]
    # the data tell a running-mean prediction from a current-step one, and the mean from the sum
    assert distinct_predictions >= 2
    assert not np.array_equal(ref.mean_outputs, ref.outputs_by_t.sum(0))


def test_reference_two_input_wrapper_by_hand(product_snn):
    info = product_snn.info
    assert info["time_input"] and len(info["wrappers"]) == 1
    assert {s["kind"] for s in info["states"]} == {"membrane", "input_sum", "cumulative_output"}
    ref = run_reference(product_snn, X, T, opt_level="disable")
    for n, row in enumerate(CURRENTS):
        ka = [aif(c) for c in row]  # θ_a = ½: current c
        kb = [aif(c / 2) for c in row]  # θ_b = 1: current c/2
        assert ref.spikes[:, n].tolist() == [[sum(abs(k[t]) for k in ka), sum(abs(k[t]) for k in kb)]
                                             for t in range(T)]
        prev = [Fraction(0)] * 2
        for t in range(1, T + 1):
            mean_a = [Fraction(sum(k[:t])) * THETA / t for k in ka]
            mean_b = [Fraction(sum(k[:t])) / t for k in kb]
            cumulative = [t * a * b for a, b in zip(mean_a, mean_b)]  # F_t = t·f(S_t/t)
            step = [c - p for c, p in zip(cumulative, prev)]
            prev = cumulative
            assert ref.outputs_by_t[t - 1, n].tolist() == pytest.approx([float(v) for v in step], rel=1e-6, abs=1e-6)
            mean = [c / t for c in cumulative]  # the running mean of the output is f(means)
            assert ref.mean_by_t[t - 1, n].tolist() == pytest.approx([float(v) for v in mean], rel=1e-6, abs=1e-6)
            if abs(mean[0] - mean[1]) > Fraction(1, 100):
                assert ref.predictions_by_t[t - 1, n] == argmax(mean)
    # with the time input at 1 for every step the average would be f(S_t)/t, a different value
    wrong = ref.mean_by_t.copy()
    for t in range(2, T + 1):
        sa = np.array([[float(Fraction(sum(aif(c)[:t])) * THETA) for c in row] for row in CURRENTS])
        sb = np.array([[float(Fraction(sum(aif(c / 2)[:t]))) for c in row] for row in CURRENTS])
        wrong[t - 1] = sa * sb / t
    assert not np.allclose(wrong[1:], ref.mean_by_t[1:])


@pytest.mark.parametrize("fixture", ["linear_snn", "product_snn"])
def test_runtime_matches_reference_on_hand_snns(request, fixture):
    snn = request.getfixturevalue(fixture)
    ref = run_reference(snn, X, T)
    result = SNNSession(snn.model).run_batch(X, T, keep_outputs=True)
    assert np.array_equal(result.spikes, ref.spikes)
    assert np.array_equal(result.outputs_by_t, ref.outputs_by_t)
    assert np.array_equal(result.mean_outputs, ref.mean_outputs)
    assert np.array_equal(result.predictions_by_t, ref.predictions_by_t)


def _neuron(name, theta):
    return {"input": "x", "output": name, "nodes": [name], "op": "AIF", "theta_in": theta, "theta_out": theta,
            "s_min": S_MIN, "s_max": S_MAX}


def test_rate_coding_of_the_ann_by_hand(linear_snn, product_snn):
    """run_rate_coded_ann, from the ANN alone, gives the hand-computed spikes and running means."""
    ann_linear = build([pqa("x", "q", "lam"), helper.make_node("MatMul", ["q", "W"], ["y"])],
                       {"lam": 2.0, "W": [[float(w) for w in row] for row in W]}, 3, "linear")
    ideal = run_rate_coded_ann(ann_linear, [_neuron("q", 0.5)], X, T)
    assert np.array_equal(np.stack([lv[0] for lv in ideal.levels_by_t]), SPIKES.transpose(2, 0, 1))
    ref = run_reference(linear_snn, X, T)
    assert np.allclose(ideal.mean_by_t, ref.mean_by_t, rtol=1e-6, atol=0)
    ann_product = build([pqa("x", "qa", "lam_a"), pqa("x", "qb", "lam_b"), helper.make_node("Mul", ["qa", "qb"], ["y"])],
                        {"lam_a": 2.0, "lam_b": 4.0}, 2, "product")
    ideal = run_rate_coded_ann(ann_product, [_neuron("qa", 0.5), _neuron("qb", 1.0)], X, T)
    for n, row in enumerate(CURRENTS):
        for t in range(1, T + 1):
            mean_a = [Fraction(sum(aif(c)[:t])) * THETA / t for c in row]
            mean_b = [Fraction(sum(aif(c / 2)[:t])) / t for c in row]
            want = [float(a * b) for a, b in zip(mean_a, mean_b)]
            assert ideal.mean_by_t[t - 1, n].tolist() == pytest.approx(want, rel=1e-6, abs=1e-6)
    ref = run_reference(product_snn, X, T)
    assert np.allclose(ideal.mean_by_t, ref.mean_by_t, rtol=1e-6, atol=1e-6)


def test_reference_is_independent_of_the_runtime(tmp_path):
    import subprocess
    import sys

    code = ("import sys, pmsm_compiler.testing.reference as r; "
            "assert not [m for m in sys.modules if m.startswith('pmsm_compiler.runtime')], 'runtime imported'")
    # cwd outside the checkout: the installed package (with its passes and runtime), not the source folder
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path)


def test_reference_refuses_an_initial_value_the_format_does_not_have():
    assert initial_value({"input": "a.u", "kind": "membrane", "init": 0.5}) == 0.5
    assert initial_value({"input": "w.sum0", "kind": "input_sum", "init": 0.0}) == 0.0
    with pytest.raises(ValueError, match="the format says 0.5"):
        initial_value({"input": "a.u", "kind": "membrane", "init": 0.0})


# ------------------------------------------------------------------------------------------------
# the generator
# ------------------------------------------------------------------------------------------------

def test_generator_is_deterministic_and_valid():
    import onnxruntime  # noqa: F401 - the generator runs each network once

    for seed in range(25):
        a, da = fuzz.random_network(seed)
        b, db = fuzz.random_network(seed)
        assert a.SerializeToString() == b.SerializeToString() and da == db
        onnx.checker.check_model(a, full_check=True)
        assert da.startswith(f"seed {seed}: ")
        x = fuzz.fuzz_inputs(a)
        assert x.dtype == np.float32 and len(x) >= 1



def test_generator_version_2_writes_the_round_forms():
    """Version 2 writes plain quantizers in all four rounding styles (Round ones included), from a
    stream of their own: a network whose quantizers all round with Floor is version 1's graph."""
    import json

    styles, unchanged = set(), 0
    for seed in range(120):
        v1, _ = fuzz.random_network(seed, version=1)
        v2, _ = fuzz.random_network(seed, version=2)
        meta = json.loads(next(p.value for p in v2.metadata_props if p.key == fuzz.FUZZ_METADATA_KEY))
        assert meta["version"] == 2
        rounding = {q["rounding"] for q in meta["quantizers"]}
        styles |= rounding
        if rounding <= {"floor"}:
            assert v1.graph.SerializeToString() == v2.graph.SerializeToString(), seed
            unchanged += 1
        ops = {n.op_type for n in v2.graph.node}
        if rounding - {"floor"}:
            assert "Round" in ops
    assert styles == {"floor", "round", "clip_round", "round_ste"} and unchanged > 60
    with pytest.raises(ValueError, match="generator version 4"):
        fuzz.random_network(0, version=4)


def test_generator_version_3_writes_the_cnn_activations():
    """Version 3 swaps 60 % of the elementwise activations for a CNN activation (PRelu, Elu, Selu,
    Celu, Mish, Softsign, ThresholdedRelu), 20 % of the Where's comparisons for a LessOrEqual and
    combines 40 % of its masks with another (And, Or, Xor, Not), from a stream of its own: a network
    without one is version 2's graph."""
    import json

    new = {"PRelu", "Elu", "Selu", "Celu", "Mish", "Softsign", "ThresholdedRelu", "LessOrEqual", "And", "Or", "Xor",
           "Not"}
    placed, unchanged = set(), 0
    for seed in range(400):
        v2, _ = fuzz.random_network(seed, version=2)
        v3, _ = fuzz.random_network(seed)
        meta = json.loads(next(p.value for p in v3.metadata_props if p.key == fuzz.FUZZ_METADATA_KEY))
        assert meta["version"] == fuzz.GENERATOR_VERSION == 3
        used = {n.op_type for n in v3.graph.node} & new
        placed |= used
        if not used:
            assert v2.graph.SerializeToString() == v3.graph.SerializeToString(), seed
            unchanged += 1
    assert placed == new and unchanged > 300


@pytest.mark.parametrize("op", sorted(op for domain, op in DEFAULT_ALLOWED_OPS))
def test_generator_places_every_allowed_op(op):
    model, description = fuzz.random_network(1000 + len(op), ops=[op])
    used = {n.op_type for n in model.graph.node if n.domain in ("", "ai.onnx")}
    assert op in used, f"{op} not placed: {description}"


def test_generator_covers_the_constructs():
    """Over a few hundred seeds: every quantizer form, fixed and dynamic batch, quantizers on the
    input and as the output, L from 2 to 16, tiny and huge scales."""
    seen = set()
    levels = set()
    for seed in range(300):
        model, description = fuzz.random_network(seed)
        meta = fuzz._fuzz_meta(model)
        seen.add("fixed" if isinstance(meta["batch"], int) else "dynamic")
        for q in meta["quantizers"]:
            seen.add(q["form"])
            seen.add(q["scale_kind"])
            levels.add(q["levels"])
            if q["form"] == "pqa_node" and q["k_min"] == 0:
                seen.add("unsigned")
        seen.update(w for w in ("input-", "output-") if w in description)
    assert {"pqa_node", "qcfs_node", "plain", "plain_qcfs", "qdq", "unsigned", "fixed", "dynamic", "input-",
            "output-", "tiny", "huge"} <= seen
    assert set(range(2, 17)) <= levels


# ------------------------------------------------------------------------------------------------
# the fixed-seed slice
# ------------------------------------------------------------------------------------------------

SLICE = range(50)
_SLICE_RECORDS: dict[int, dict] = {}


@pytest.mark.parametrize("seed", SLICE)
def test_fuzz_slice(seed):
    record = fuzz.run_graph(seed, opt_levels=["disable", "all"], max_timesteps=4, cli=seed % 10 == 0)
    _SLICE_RECORDS[seed] = record
    failures = [r for r in record["results"] if r["status"] == "fail"]
    assert not failures, (
        f"{record['description']}\n" + "\n".join(
            f"  {r['category']} ({r['check']}, {r['mode']}, {r['opt_level']}): {r['message'][:300]}" for r in failures)
        + f"\n  replay: python bench/fuzz_compiler.py --seeds {seed} --verbose")


#: the options under which a replayed seed failed, where they are not the replay's defaults
REPLAY_OPTIONS = {71475: {"max_timesteps": 8}, 70830: {"opt_levels": ["extended"]}, 200331: {"version": 2},
                  700113: {"version": 2, "max_timesteps": 8, "opt_levels": ["all"]}}


@pytest.mark.parametrize("seed", [52032, 60260, 60800, 61809, 61860, 61973, 70000, 70094, 70382, 70425, 71475, 70830,
                                  70932, 80133, 200331, 700113])
def test_fuzz_finds_fixed(seed):
    """Seeds outside the slice whose failures were fixed: 52032, a ReduceMean over 168-byte samples
    whose passes moved samples to other alignments (runtime/time_batched.py, ALIGNMENT_BYTES);
    60800, 61809, 61860, fixed-batch MatMuls of rank-3 activations that onnxruntime fuses with their
    bias on a step's static shapes only (time_batched._static_shape_fusion); 61973, an Identity to
    a graph output that onnxruntime's Identity elimination broke in the SNN (the tensor's producer
    writes the output, ``compiler._identity_outputs_written_by_their_producers``; its readers moved
    to the Identity's output instead stopped the ANN's Mul + MatMul fusion, 80133; renaming the
    tensor in canonicalize
    instead broke the verification's tail on 70094, 70382, 70425, kept here); 60260,
    x / Size(x), a model that depends on its batch, whose pmsm-run check now runs the reference in
    pmsm-run's batches (the harness, not the compiler); 71475, a Log, which onnxruntime rounds by
    an element's place in the tensor, read the batch in passes of 6 steps (T = 7: its own T;
    time_batched.POSITION_SENSITIVE_OPS); 70830, a logit 1e-9 in the ANN and 0 in the folded SNN
    whose top-1 disagreement failed the verification's 0.98 policy (a tie now counts as agreeing,
    ``top1_ties``); 70932, a Clip the quantizer after it implies, which the compiler rightly drops
    and the rate-coding reference wrapped (the harness, ``fuzz._with_implied_clamps``); 200331
    (generator version 2), a Relu before a signed quantizer whose input shape inference left
    unknown: the harness ran the quantizer on empty tensors, found its maps "equal" and took the
    Relu as implied (``fuzz._quantizer_maps``); 700113, a tie of exact arithmetic (the reference's
    membrane 10.99998, 11 exactly, the folded SNN's a spike earlier) in a network of 36 levels, where
    one flip is 2.8 % (``fuzz.RATE_TIE_MARGIN``)."""
    # found under generator version 1 unless REPLAY_OPTIONS says otherwise: built as they were found
    options = {"opt_levels": ["disable", "all"], "max_timesteps": 4, "version": 1, **REPLAY_OPTIONS.get(seed, {})}
    record = fuzz.run_graph(seed, cli=seed == 60260, **options)
    failures = [r for r in record["results"] if r["status"] == "fail"]
    assert not failures, [(r["category"], r["mode"], r["opt_level"], r["message"][:200]) for r in failures]
    # 70000 (and 74 more of its run): the readers moved to an Identity's output came before it in
    # the node order, and the compile refused with "internal error: ... topologically sorted"
    assert not [r for r in record["results"] if "internal error" in (r["message"] or "")]
    assert any(r["check"] == "consistency" and r["status"] == "ok" for r in record["results"])
    if seed == 70932:
        assert any(r["check"] == "semantics" and r["status"] == "ok" for r in record["results"])


def _identity_graph():
    import onnx_graphsurgeon as gs

    x = gs.Variable("x", np.float32, ["N", 4])
    t, out, y = (gs.Variable(n, np.float32) for n in ("t", "features", "logits"))
    scale = gs.Constant("s", np.array(0.5, np.float32))
    w = gs.Constant("w", np.ones((4, 3), np.float32))
    nodes = [gs.Node("Mul", "psp", inputs=[x, scale], outputs=[t]),
             gs.Node("MatMul", "fc", inputs=[t, w], outputs=[y]),  # before the Identity
             gs.Node("Identity", "out", inputs=[t], outputs=[out])]
    return gs.Graph(nodes=nodes, inputs=[x], outputs=[y, out])


def test_an_identity_output_is_written_by_its_producer():
    """Mul → t → {MatMul, Identity → features}: the Mul writes features, the MatMul reads it, no
    Identity left (onnxruntime's Identity elimination broke the SNN otherwise, seed 61973), and no
    Identity between the Mul and the MatMul (which stops the fusion the ANN gets, seed 80133);
    where the format records t's name (a wrapper's output), the Identity stays and the MatMul reads
    its output."""
    from pmsm_compiler.compiler import _identity_outputs_written_by_their_producers

    graph = _identity_graph()
    _identity_outputs_written_by_their_producers(graph, set())
    ops = {n.name: n for n in graph.nodes}
    assert set(ops) == {"psp", "fc"} and ops["psp"].outputs[0].name == "features"
    assert ops["fc"].inputs[0].name == "features" and [n.name for n in graph.nodes] == ["psp", "fc"]
    graph = _identity_graph()
    _identity_outputs_written_by_their_producers(graph, {"t"})
    ops = {n.name: n for n in graph.nodes}
    assert ops["psp"].outputs[0].name == "t" and ops["fc"].inputs[0].name == "features"
    assert [n.name for n in graph.nodes] == ["psp", "out", "fc"]  # re-sorted


def _seed_70932():
    model, _ = fuzz.random_network(70932, version=1)
    (q,) = [q for q in fuzz._fuzz_meta(model)["quantizers"] if q["input"] == "clip_12"]
    return model, q


def test_rate_coding_gives_a_neuron_the_clamps_its_quantizer_implies():
    """Clip(pqa_8, lo, hi) → plain quantizer with k_max 13: hi lies above the quantizer's top
    boundary (level(hi) = 13), so Q(clip(x)) = Q(x) and the neuron reads pqa_8, as in the compiled
    SNN; a hi below it, or a second reader of the clip, keeps the clip an op of its own."""
    model, q = _seed_70932()
    absorbed = fuzz._with_implied_clamps(model, q)
    assert absorbed["input"] == "pqa_8" and absorbed["nodes"] == [*q["nodes"], "Clip_13"]
    hi = next(t for t in model.graph.initializer if t.name == "hi_11")
    step = next(t for t in model.graph.initializer if t.name == "scale_in_14")
    top = float(numpy_helper.to_array(step)) * 12.4  # level(hi) = 12 < k_max
    hi.CopyFrom(numpy_helper.from_array(np.array(top, np.float32), "hi_11"))
    assert fuzz._with_implied_clamps(model, q) == q
    model, q = _seed_70932()
    model.graph.output.append(helper.make_tensor_value_info("clip_12", TensorProto.FLOAT, None))
    assert fuzz._with_implied_clamps(model, q) == q


def test_fuzz_slice_exercises_the_compiler():
    """The slice is not vacuous: enough of its graphs compile in each mode, with temporal wrappers
    and the time input, and their checks ran (refusals alone would pass every slice test)."""
    if len(_SLICE_RECORDS) < len(SLICE):
        pytest.skip("needs the whole slice in this session")
    counts = {}
    for record in _SLICE_RECORDS.values():
        for r in record["results"]:
            key = (r["check"], r["mode"], r["status"])
            counts[key] = counts.get(key, 0) + 1
            if r["check"] == "consistency" and r["status"] == "ok":
                passes = r["details"]["time_batched"].get("steps_per_run", 1) > 1
                key = ("layer by layer" if passes else "step by step", r["mode"])
                counts[key] = counts.get(key, 0) + 1
            if r["check"] == "compile" and r["status"] == "ok":
                for feature in ("wrappers", "time_input"):
                    if r["details"][feature]:
                        counts[(feature, r["mode"])] = counts.get((feature, r["mode"]), 0) + 1
    for mode, least in (("exact", 12), ("folded", 20)):
        assert counts.get(("compile", mode, "ok"), 0) >= least, counts
        assert counts.get(("wrappers", mode), 0) >= 5 and counts.get(("time_input", mode), 0) >= 5, counts
        # the runtime's two ways of running T steps both met the step-by-step reference
        assert counts.get(("layer by layer", mode), 0) >= 5 and counts.get(("step by step", mode), 0) >= 1, counts
        for check in ("parity", "consistency", "semantics", "verify"):
            assert counts.get((check, mode, "ok"), 0) + counts.get((check, mode, "fail"), 0) >= least, (check, counts)


def _rate_results(snn_levels, ref_levels, margins):
    """(ideal, ref) for ``fuzz.compare_rate_coding``: one layer of levels [T, N, 1]."""
    from types import SimpleNamespace

    means = np.zeros((len(snn_levels), np.asarray(snn_levels).shape[1], 1), np.float32)
    ref = SimpleNamespace(levels_by_t=[[np.asarray(k, np.float32)] for k in snn_levels], mean_by_t=means)
    ideal = SimpleNamespace(levels_by_t=[[np.asarray(k, np.float32)] for k in ref_levels], mean_by_t=means,
                            margins_by_t=[[np.asarray(m)] for m in margins])
    return ideal, ref


@pytest.mark.parametrize("snn, margin, tied", [
    ([[11], [10], [10]], 1.7e-6, True),  # one spike earlier at a tie, given back the next step
    ([[11], [10], [10]], 0.05, False),  # the same far from a boundary: a flip
    ([[12], [9], [10]], 1.7e-6, False),  # two levels off: a flip, tie or not
    ([[11], [12], [10]], 1.7e-6, False),  # then one more: totals 2 apart, a flip
])
def test_a_one_level_tie_of_exact_arithmetic_is_no_flip(snn, margin, tied):
    """``compare_rate_coding``: a neuron that parts from the reference by one level where the
    reference's membrane sat within ``RATE_TIE_MARGIN`` of a boundary, its totals never more than one
    apart, is a tie (seed 700113); anything else a flip, as before."""
    reference = [[10], [11], [10]]
    ideal, ref = _rate_results(np.array(snn)[:, :, None], np.array(reference)[:, :, None],
                               [np.full((1, 1), m) for m in (margin, 0.3, 0.3)])
    info = {"layers": [{"name": "q", "ann_output": "y"}]}
    stats = {}
    failures = fuzz.compare_rate_coding(ideal, ref, info, [{"layer_output": "y"}], 1, stats)
    assert stats["tied_neurons"] == int(tied)
    assert [f[0] for f in failures] == ([] if tied else ["rate-levels"])


def test_a_boundary_held_by_a_cap_on_both_sides_is_no_tie():
    """``reference.boundary_margin``: the distance to the nearest boundary where k changes, inf where
    the caps hold k on both of its sides (AIF: 15.99999 with s_max = 15 is no tie, 10.99999 is)."""
    from pmsm_compiler.testing.reference import boundary_margin

    m = np.array([10.99999, 15.99999, -5.00001, 3.49999, 0.999995], np.float32)
    current = np.ones(5, np.float32)
    aif = boundary_margin("AIF", m, current, -5, 15)
    assert aif[0] < 1e-5 and np.isinf(aif[1]) and np.isinf(aif[2])
    half_even = boundary_margin("AIFHalfEven", m, current, -5, 15)
    assert half_even[3] < 1e-5 and half_even[0] > 0.04
    assert boundary_margin("IF", m, current, 0, 1)[4] < 1e-5
