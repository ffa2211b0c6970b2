"""time_batched: T steps layer by layer equal T steps one at a time, bit for bit.

The kernel (``time_batched = 1``) against T single-step calls of the same kernel; whole SNNs
(the shipped ResNet-20s, both modes, PQA and QCFS) time-batched against step by step, over T that
do and do not divide into runs; the planning (``steps_per_run``) and every refusal with its reason.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from pmsm_compiler.runtime.fuse_neuron_kernels import KERNEL_DOMAIN
from pmsm_compiler.runtime.time_batched import (
    batch_axes,
    default_time_batch_bytes,
    l2_cache_bytes,
    over_time,
    split_rows,
    steps_per_run,
)

from pmsm_compiler.limits import DEFAULT_TIME_BATCH_BYTES, DEFAULT_TIME_PASS_BYTES

# ------------------------------------------------------------------------------------------------
# the kernel
# ------------------------------------------------------------------------------------------------


def kernel_model(op: str, time_batched: int, residual: bool, attrs: dict, pass_input: bool = False) -> bytes:
    counters = "Counters" in op
    inputs = ["i", "u"] + (["r"] if residual else [])
    if pass_input:
        inputs += ([] if residual else [""]) + ["pass"]
    outputs = ["k", "u_next", "count"] + (["counters"] if counters else [])
    node = helper.make_node(op, inputs, outputs, domain=KERNEL_DOMAIN, time_batched=time_batched, **attrs)
    value = [helper.make_tensor_value_info(n, TensorProto.INT64 if n == "pass" else TensorProto.FLOAT, None)
             for n in inputs if n]
    out = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs[:2]]
    out.append(helper.make_tensor_value_info("count", TensorProto.FLOAT if attrs.get("count_float") else TensorProto.INT64,
                                             None))
    if counters:
        out.append(helper.make_tensor_value_info("counters", TensorProto.INT64, None))
    graph = helper.make_graph([node], "kernel", value, out)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(KERNEL_DOMAIN, 1)])
    return model.SerializeToString()


def session(library, model: bytes, threads: int = 2):
    so = ort.SessionOptions()
    so.register_custom_ops_library(library)
    so.intra_op_num_threads = threads
    so.log_severity_level = 3
    return ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])


CASES = [
    ("AIFCounters", {"s_min": -2, "s_max": 8, "count_float": 1}, False),
    ("AIFHalfEvenCounters", {"s_min": -2, "s_max": 8}, True),
    ("IFCounters", {}, False),
    ("AIFCount", {"s_min": -4, "s_max": 4, "in_div": 0.37, "out_mul": 1.7}, True),
    ("AIFCounters", {"s_min": 0, "s_max": 8, "res_scale": 0.5, "in_mul": 3.0}, True),
]


@pytest.mark.parametrize("op,attrs,residual", CASES)
@pytest.mark.parametrize("samples,steps,dims", [(1, 2, (7, 50, 60)), (3, 5, (16, 8, 8)), (2, 1, (5,)), (4, 3, (3, 4100))])
def test_kernel_runs_the_steps_of_single_step_calls(library, op, attrs, residual, samples, steps, dims):
    # (7, 50, 60): 21,000 neurons a sample, three parallel parts of 8,192 and L1 tiles of 2,048 with a
    # ragged end; (3, 4100): the per-sample size is no multiple of anything
    rng = np.random.default_rng(100 * samples + steps)
    x = (rng.standard_normal((steps, samples, *dims)) * 3).astype(np.float32)
    ties = np.arange(-20, 20, dtype=np.float32)[:x.size] / 2  # exact ties and both caps
    x.reshape(-1)[:ties.size] = ties
    r = (rng.standard_normal(x.shape) * 2).astype(np.float32)
    u0 = rng.random((samples, *dims)).astype(np.float32)
    one = session(library, kernel_model(op, 0, residual, attrs))
    u, expected = u0, []
    for t in range(steps):
        feeds = {"i": x[t], "u": u, **({"r": r[t]} if residual else {})}
        outs = one.run(None, feeds)
        u = outs[1]
        expected.append(outs)
    many = session(library, kernel_model(op, 1, residual, attrs))
    feeds = {"i": x.reshape(steps * samples, *dims), "u": u0,
             **({"r": r.reshape(steps * samples, *dims)} if residual else {})}
    got = many.run(None, feeds)
    np.testing.assert_array_equal(split_rows(got[0], steps), np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(got[1], u)  # the membranes after the last step
    for index in range(2, len(got)):  # the count and counters, per step and sample
        assert got[index].dtype == expected[0][index].dtype
        np.testing.assert_array_equal(split_rows(got[index], steps), np.stack([e[index] for e in expected]))


@pytest.mark.parametrize("op,attrs,residual,static", [(*case, static) for case in CASES for static in (False, True)
                                                      if not (static and case[2])])  # no residual with it
@pytest.mark.parametrize("samples,steps,dims", [(3, 5, (16, 8, 8)), (1, 2, (7, 50, 60)), (2, 1, (5,))])
def test_kernel_pass_input_starts_fresh_and_takes_a_static_current(library, op, attrs, residual, static, samples,
                                                                   steps, dims):
    # fresh = 1: every membrane starts from u_init, whatever U holds; static_current = 1: I is one
    # step, the same at every step; both the same steps, bit for bit, as single-step calls
    rng = np.random.default_rng(7 * samples + steps)
    x = (rng.standard_normal((samples, *dims)) * 3).astype(np.float32)
    x.reshape(-1)[:8] = [-1.5, -0.5, 0.5, 1.5, 2.5, 7.5, 8.5, -2.5]  # ties and caps from u = 0.5
    xs = np.broadcast_to(x, (steps, *x.shape)) if static else (rng.standard_normal((steps, samples, *dims)) * 3
                                                               ).astype(np.float32)
    r = (rng.standard_normal((steps, samples, *dims)) * 2).astype(np.float32)
    one = session(library, kernel_model(op, 0, residual, attrs))
    u, expected = np.full((samples, *dims), 0.5, np.float32), []
    for t in range(steps):
        outs = one.run(None, {"i": np.ascontiguousarray(xs[t]), "u": u, **({"r": r[t]} if residual else {})})
        u = outs[1]
        expected.append(outs)
    many = session(library, kernel_model(op, 1, residual, {**attrs, "u_init": 0.5, "static_current": int(static)},
                                         pass_input=True))
    garbage = rng.random((samples, *dims)).astype(np.float32) * 100  # not read: the pass starts fresh
    feeds = {"i": x if static else np.ascontiguousarray(xs).reshape(steps * samples, *dims), "u": garbage,
             "pass": np.array([steps, 1], np.int64), **({"r": r.reshape(steps * samples, *dims)} if residual else {})}
    got = many.run(None, feeds)
    np.testing.assert_array_equal(split_rows(got[0], steps), np.stack([e[0] for e in expected]))
    np.testing.assert_array_equal(got[1], u)
    for index in range(2, len(got)):
        np.testing.assert_array_equal(split_rows(got[index], steps), np.stack([e[index] for e in expected]))
    # fresh = 0 reads U: from the membranes after a first pass, a second pass continues the run
    if not static:
        return
    u_mid = many.run(None, {**feeds, "pass": np.array([1, 1], np.int64)})[1]
    rest = many.run(None, {**feeds, "u": u_mid, "pass": np.array([steps - 1, 0], np.int64)}) if steps > 1 else None
    if rest is not None:
        np.testing.assert_array_equal(rest[1], u)
        np.testing.assert_array_equal(split_rows(rest[0], steps - 1), np.stack([e[0] for e in expected[1:]]))


@pytest.mark.parametrize("attrs,feeds,why", [
    ({"static_current": 1}, {"pass": [2, 0]}, None),  # the reference case: runs
    ({"static_current": 1}, {}, "needs the pass input"),
    ({"static_current": 1}, {"pass": [0, 0]}, "steps >= 1"),
    ({"static_current": 1}, {"pass": [2, 2]}, "fresh 0 or 1"),
    ({"static_current": 1}, {"pass": [2, 0, 1]}, "two values"),
    ({"static_current": 1}, {"pass": [2, 0], "u_rows": 3}, "one step"),
    ({}, {"pass": [3, 0]}, "do not match"),
    ({}, {"pass": [2, 1]}, "u_init"),
    ({"time_batched": 0, "static_current": 1}, {}, "need time_batched"),
    ({"time_batched": 0}, {"pass": [1, 0]}, "need time_batched"),
    ({"static_current": 1}, {"pass": [2, 0], "r_rows": 4}, "takes no residual"),  # T·N rows, as a residual has
    ({"static_current": 1}, {"pass": [2, 0], "r_rows": 2}, "takes no residual"),
])
def test_kernel_refuses_a_pass_it_cannot_run(library, attrs, feeds, why):
    attrs = {"s_min": -2, "s_max": 8, **attrs}
    time_batched = attrs.pop("time_batched", 1)
    static = attrs.get("static_current", 0)
    residual = "r_rows" in feeds
    model = session(library, kernel_model("AIFCounters", time_batched, residual, attrs, pass_input="pass" in feeds))
    u_rows = feeds.get("u_rows", 2)
    run = {"i": np.zeros((2 if static or not time_batched else 4, 10), np.float32),
           "u": np.zeros((u_rows, 10), np.float32)}
    if "pass" in feeds:
        run["pass"] = np.array(feeds["pass"], np.int64)
    if residual:
        run["r"] = np.zeros((feeds["r_rows"], 10), np.float32)
    if why is None:
        out = model.run(None, run)
        assert out[0].shape == (4, 10) and out[1].shape == (2, 10) and out[2].shape == (4, 1)
        return
    with pytest.raises(Exception, match=why):
        model.run(None, run)


def test_kernel_one_thread_and_two_agree(library):
    model = kernel_model("AIFCounters", 1, False, {"s_min": -2, "s_max": 8})
    rng = np.random.default_rng(3)
    feeds = {"i": (rng.standard_normal((8, 20000)) * 3).astype(np.float32), "u": rng.random((2, 20000)).astype(np.float32)}
    a, b = session(library, model, 1).run(None, feeds), session(library, model, 2).run(None, feeds)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("i_shape,u_shape,why", [
    ((6, 10), (4, 10), "whole samples"),  # 40 membranes for 60 currents: no whole number of steps
    ((6, 10), (15,), "whole samples"),  # 15 membranes: not whole samples of 10
])
def test_kernel_refuses_membranes_that_do_not_fit(library, i_shape, u_shape, why):
    many = session(library, kernel_model("AIFCounters", 1, False, {"s_min": -2, "s_max": 8}))
    with pytest.raises(Exception, match=why):
        many.run(None, {"i": np.zeros(i_shape, np.float32), "u": np.zeros(u_shape, np.float32)})


# ------------------------------------------------------------------------------------------------
# whole SNNs
# ------------------------------------------------------------------------------------------------

_COMPILED: dict = {}


def shipped(name: str, mode: str):
    from pmsm_compiler.models import shipped_model_path

    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model

    key = (name, mode)
    if key not in _COMPILED:
        _COMPILED[key] = compile_model(load_model(shipped_model_path(f"{name}.onnx")), mode).model
    return _COMPILED[key]


def images(n: int, seed: int = 0) -> np.ndarray:
    from pmsm_compiler.data import (
        CIFAR10_MEAN,
        CIFAR10_STD,
        load_bundled_sample,
        normalize,
    )

    ds = load_bundled_sample()
    start = (seed * 37) % (len(ds.x) - n)
    return normalize(ds.x[start:start + n], CIFAR10_MEAN, CIFAR10_STD)


FIELDS = ("mean_outputs", "predictions_by_t", "spikes", "outputs_by_t", "counters", "counters_by_sample")
# a budget that allows 16 steps of any of these batches per run
ROOMY = 1 << 30


@pytest.mark.parametrize("name,mode", [("resnet20_pqa_cifar10", "folded"), ("resnet20_pqa_cifar10", "exact"),
                                       ("resnet20_qcfs_cifar10", "folded"), ("resnet20_pqa_sparse_cifar10", "exact"),
                                       ("vit_cifar_pqa_cifar10", "folded"), ("vit_cifar_pqa_cifar10", "exact")])
def test_time_batched_runs_equal_step_by_step_runs(library, name, mode):
    from pmsm_compiler.runtime import SNNSession

    model = shipped(name, mode)
    stepwise = SNNSession(model, time_batch=1)
    batched = SNNSession(model, time_batch=4, time_batch_bytes=ROOMY)
    assert batched.time_batched and batched.time_batched_note is None
    assert not stepwise.time_batched and stepwise.time_batched_note == "time_batch = 1"
    for n, timesteps in ((1, 2), (3, 4), (3, 9), (5, 7)):  # one run; exactly one; 4 + 4 + 1; 4 + 3
        x = images(n, seed=timesteps)
        a = stepwise.run_batch(x, timesteps, keep_outputs=True, sample_counters=True)
        b = batched.run_batch(x, timesteps, keep_outputs=True, sample_counters=True)
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=f"{field} N={n} T={timesteps}")
    assert ("time_batched" in "".join(map(str, batched._variants))) and not any(
        "time_batched" in str(k) for k in stepwise._variants)


def test_the_batch_budget_decides_between_layer_by_layer_and_step_by_step(library):
    from pmsm_compiler.runtime import SNNSession

    model = shipped("resnet20_pqa_cifar10", "folded")
    layer = 16 * 32 * 32 * 4  # ResNet-20's largest neuron layer, bytes per sample
    assert SNNSession(model).time_batch_bytes == default_time_batch_bytes()  # the machine's, by default
    session = SNNSession(model, time_batch_bytes=DEFAULT_TIME_BATCH_BYTES)
    assert session._time_batch_layer_bytes() == layer
    # a step of up to 32 samples fits the 2 MiB budget; as many steps a pass as hold 16 MiB, at most 16
    assert DEFAULT_TIME_BATCH_BYTES == 32 * layer and DEFAULT_TIME_PASS_BYTES == 256 * layer
    assert steps_per_run(1, 100, session.time_batch, DEFAULT_TIME_BATCH_BYTES, layer) == 16
    assert steps_per_run(16, 100, session.time_batch, DEFAULT_TIME_BATCH_BYTES, layer) == 16
    assert steps_per_run(32, 100, session.time_batch, DEFAULT_TIME_BATCH_BYTES, layer) == 8
    assert steps_per_run(33, 100, session.time_batch, DEFAULT_TIME_BATCH_BYTES, layer) == 1
    assert steps_per_run(1, 3, 16, DEFAULT_TIME_BATCH_BYTES, layer) == 3
    # twice a 2 MiB L2: 64 samples run 4 steps a pass, 65 step by step
    assert steps_per_run(64, 100, 16, 2 * DEFAULT_TIME_BATCH_BYTES, layer) == 4
    assert steps_per_run(65, 100, 16, 2 * DEFAULT_TIME_BATCH_BYTES, layer) == 1
    # a pass budget under two steps: step by step
    assert steps_per_run(32, 100, 16, DEFAULT_TIME_BATCH_BYTES, layer, pass_bytes=3 << 20) == 1
    session.run_batch(images(64), 2)  # over budget: no time-batched session is built
    assert not any("time_batched" in str(k) for k in session._variants)
    assert session.time_batch_report(64, 8) == {
        "steps_per_run": 1, "reason": "one step of 64 samples holds 4,194,304 bytes of its largest neuron layer, over the "
                                      "2,097,152 of a layer-by-layer step"}
    assert session.time_batch_report(32, 16) == {"steps_per_run": 8, "reason": None}
    small_pass = SNNSession(model, time_batch_bytes=DEFAULT_TIME_BATCH_BYTES, time_pass_bytes=3 << 20)
    assert small_pass.time_batch_report(32, 16) == {
        "steps_per_run": 1, "reason": "one step of 32 samples holds 2,097,152 bytes of its largest neuron layer, over half "
                                      "the 3,145,728 of a layer-by-layer pass"}
    session.run_batch(images(2), 2)
    assert any("time_batched" in str(k) for k in session._variants)
    for bad in (dict(time_batch=0), dict(time_batch_bytes=0), dict(time_pass_bytes=0)):
        with pytest.raises(Exception, match="time_batch"):
            SNNSession(model, **bad)


def _cache_tree(root, entries):
    for index, (level, kind, size) in enumerate(entries):
        d = root / f"index{index}"
        d.mkdir(parents=True)
        (d / "level").write_text(f"{level}\n")
        (d / "type").write_text(f"{kind}\n")
        (d / "size").write_text(f"{size}\n")
    return str(root)


def test_the_step_budget_is_twice_the_l2_cache_the_system_describes(tmp_path):
    this_vm = _cache_tree(tmp_path / "a", [(1, "Data", "48K"), (1, "Instruction", "64K"), (2, "Unified", "2048K"),
                                           (3, "Unified", "491520K")])
    assert l2_cache_bytes(this_vm) == 2 << 20 and default_time_batch_bytes(this_vm) == 4 << 20
    in_megabytes = _cache_tree(tmp_path / "b", [(1, "Data", "32K"), (2, "Unified", "1M")])
    assert l2_cache_bytes(in_megabytes) == 1 << 20 and default_time_batch_bytes(in_megabytes) == 2 << 20
    # not described, or not as a size: the fixed default
    no_l2 = _cache_tree(tmp_path / "c", [(1, "Data", "32K"), (3, "Unified", "8M")])
    unreadable = _cache_tree(tmp_path / "d", [(2, "Unified", "large")])
    for root in (no_l2, unreadable, str(tmp_path / "missing")):
        assert l2_cache_bytes(root) is None and default_time_batch_bytes(root) == DEFAULT_TIME_BATCH_BYTES


@pytest.mark.parametrize("name,mode", [("resnet20_pqa_cifar10", "folded"), ("resnet20_pqa_cifar10", "exact"),
                                       ("vit_cifar_pqa_cifar10", "folded")])
def test_the_pass_input_and_the_static_currents_of_a_time_batched_step(library, name, mode):
    # every kernel reads the pass input and knows its membrane's initial value; a static input that
    # only kernels read, as their current, goes in as one step; the inputs fed as T copies share one
    # symbol for their rows
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.runtime.time_batched import PASS_INPUT, ROWS_SYMBOL

    session = SNNSession(shipped(name, mode), time_batch_bytes=ROOMY)
    assert session.time_batched, session.time_batched_note
    model, broadcast = session._time_batched_plan[0], session._time_batched_plan[4]
    initial = {s.input: s.init for s in session.info.states}
    kernels = [n for n in model.graph.node if n.domain == KERNEL_DOMAIN]
    for node in kernels:
        attrs = {a.name: a for a in node.attribute}
        assert node.input[3] == PASS_INPUT and attrs["u_init"].f == initial[node.input[1]]
        assert ("static_current" in attrs) == (node.input[0] in broadcast)
    readers = {}
    for node in model.graph.node:
        for index, tensor in enumerate(node.input):
            residual = node.input[2] if node.domain == KERNEL_DOMAIN and index == 0 else None
            readers.setdefault(tensor, []).append((node.domain, index, residual))
    states = {s.input for s in session.info.states}
    for value in model.graph.input:
        # exactly the inputs read by kernels alone, as their current, with no residual
        only_current = all(r == (KERNEL_DOMAIN, 0, "") for r in readers.get(value.name, [None]))
        assert (value.name in broadcast) == (only_current and value.name not in states | {PASS_INPUT}), value.name
        if value.name in broadcast:
            assert value.type.tensor_type.shape.dim[0].dim_param != ROWS_SYMBOL
        elif value.name not in states | {PASS_INPUT, session.info.time_input}:
            assert value.type.tensor_type.shape.dim[0].dim_param == ROWS_SYMBOL, value.name
    if name.startswith("resnet20") and mode == "folded":  # the first neuron reads the static prologue's output
        assert broadcast and broadcast <= set(session._prologue_outputs)


def test_a_transformer_runs_its_first_step_on_its_own_then_passes(library):
    from pmsm_compiler.runtime import SNNSession

    session = SNNSession(shipped("vit_cifar_pqa_cifar10", "folded"))
    assert session.time_batch_report(2, 1) == {"steps_per_run": 1, "reason": "one timestep"}
    assert session.time_batch_report(2, 2) == {"steps_per_run": 1,
                                               "reason": "two timesteps, the first on its own (temporal wrappers)"}
    assert session.time_batch_report(2, 5) == {"steps_per_run": 4, "reason": None}
    assert session.time_batch_report(2, 40) == {"steps_per_run": 16, "reason": None}
    session.run_batch(images(2), 2)
    assert not any("time_batched" in str(k) for k in session._variants)  # two steps: one by one
    session.run_batch(images(2), 5)
    assert any("time_batched" in str(k) for k in session._variants)


def test_models_that_cannot_run_layer_by_layer_say_why(library):
    from pmsm_compiler.runtime import SNNSession

    plain = SNNSession(shipped("resnet20_pqa_cifar10", "folded"), kernels="off")
    assert not plain.time_batched and "fused neuron kernels" in plain.time_batched_note
    x = images(2)
    a = plain.run_batch(x, 3, keep_outputs=True)  # and they run step by step, as before
    b = SNNSession(shipped("resnet20_pqa_cifar10", "folded"), time_batch_bytes=ROOMY).run_batch(x, 3, keep_outputs=True)
    np.testing.assert_array_equal(a.outputs_by_t, b.outputs_by_t)


def test_a_plan_that_fails_leaves_the_steps_one_by_one(library, monkeypatch):
    from pmsm_compiler.runtime import SNNSession, time_batched

    def broken(*args):
        raise ValueError("no such shape")

    monkeypatch.setattr(time_batched, "state_dims", broken)
    session = SNNSession(shipped("resnet20_pqa_cifar10", "folded"))
    x = images(2)
    got = session.run_batch(x, 3, keep_outputs=True)
    assert not session.time_batched and session.time_batched_note == "not planned: ValueError: no such shape"
    expected = SNNSession(shipped("resnet20_pqa_cifar10", "folded"), time_batch=1).run_batch(x, 3, keep_outputs=True)
    np.testing.assert_array_equal(got.outputs_by_t, expected.outputs_by_t)


@pytest.mark.parametrize("batch", [1, 4])
def test_a_fixed_batch_model_runs_layer_by_layer_where_nothing_depends_on_its_batch(library, batch):
    # pmsm-compile --input-shape input:Bx3x32x32: the inputs declare B, the graph does not use it
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.models import shipped_model_path
    from pmsm_compiler.runtime import SNNSession

    ann = load_model(shipped_model_path("resnet20_pqa_cifar10.onnx"), input_shapes={"input": [batch, 3, 32, 32]})
    model = compile_model(ann, "folded").model
    batched = SNNSession(model)
    assert batched.fixed_batch == batch and batched.time_batched, batched.time_batched_note
    # the static prologue's output goes in as one step of B rows, declared so
    static = batched._time_batched_plan[4]
    assert static and all(v.type.tensor_type.shape.dim[0].dim_value == batch
                          for v in batched._time_batched_plan[0].graph.input if v.name in static)
    assert batched.time_batch_report(64, 5) == {"steps_per_run": 5, "reason": None}  # its own batch decides
    x = images(6)  # batch 4: one full batch and one padded
    a = SNNSession(model, time_batch=1).run_batch(x, 5, keep_outputs=True, sample_counters=True)
    b = batched.run_batch(x, 5, keep_outputs=True, sample_counters=True)
    for field in FIELDS:
        np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=field)

def _node(op, inputs, rank=4, out_rank=None, **attrs):
    tensors = [t if isinstance(t, gs.Tensor) else gs.Variable(t, np.float32, ["N"] + [2] * (rank - 1)) for t in inputs]
    out_rank = rank if out_rank is None else out_rank
    return gs.Node(op, name=f"{op}_0", attrs=attrs, inputs=tensors,
                   outputs=[gs.Variable(f"{op}_out", np.float32, ["N"] + [2] * (out_rank - 1))])


def _const(values):
    return gs.Constant(f"c{np.asarray(values).size}_{np.asarray(values).ndim}", np.asarray(values))


def _axes(*nodes, batch=("x", "z")):
    """batch_axes of a graph of ``nodes`` whose inputs ``batch`` have the batch axis first."""
    inputs = [t for n in nodes for t in n.inputs if isinstance(t, gs.Variable) and not t.inputs]
    graph = gs.Graph(nodes=list(nodes), inputs=inputs, outputs=nodes[-1].outputs)
    return batch_axes(graph, {}, [t.name for t in inputs if t.name in batch])


W = _const(np.ones((4, 2, 3, 3), np.float32))


@pytest.mark.parametrize("node,axis,why", [
    (_node("Conv", ["x", W]), 0, None),
    (_node("Conv", ["x", "w"]), None, "not batch-first with constant weights"),
    (_node("Add", ["x", _const(np.ones((1, 2, 1, 1), np.float32))]), 0, None),
    (_node("Add", ["x", _const(np.ones((4, 2, 2, 2), np.float32))]), None, "has 4 elements along the batch axis"),
    (_node("Add", ["x", "z"]), 0, None),
    (_node("Flatten", ["x"], axis=1), 0, None),
    (_node("Flatten", ["x"], axis=0), None, "merges the batch"),
    (_node("Flatten", ["x"], axis=2), None, "merges the batch"),
    (_node("Concat", ["x", "z"], axis=1), 0, None),
    (_node("Concat", ["x", "z"], axis=0), None, "along the batch axis"),
    (_node("Concat", ["x", "z"], axis=-4), None, "along the batch axis"),
    (_node("Concat", ["x", "c"], axis=1), None, "without one batch axis at one place"),
    (_node("Softmax", ["x"]), 0, None),
    (_node("Softmax", ["x"], axis=0), None, "along the batch axis"),
    (_node("Gemm", ["x", _const(np.ones((2, 3), np.float32))], rank=2), 0, None),
    (_node("MatMul", ["x", "z"], rank=2), None, "two activations"),
    (_node("MatMul", ["x", "z"], rank=4), 0, None),  # attention: batched over the leading axes
    (_node("MatMul", ["x", _const(np.ones((2, 3), np.float32))], rank=3), 0, None),
    (_node("Reshape", ["x", _const(np.array([-1, 8], np.int64))], out_rank=2), 0, None),
    (_node("Reshape", ["x", _const(np.array([0, 8], np.int64))], out_rank=2), 0, None),
    (_node("Reshape", ["x", _const(np.array([0, 8], np.int64))], out_rank=2, allowzero=1), None,
     "does not keep the batch axis first"),
    (_node("Reshape", ["x", _const(np.array([2, -1], np.int64))], out_rank=2), None, "does not keep the batch axis first"),
    (_node("Reshape", ["x", "shape"]), None, "a computed shape"),
    (_node("ReduceMean", ["x", _const(np.array([2, 3], np.int64))]), 0, None),
    (_node("ReduceSum", ["x", _const(np.array([0], np.int64))]), None, "reduces the batch axis"),
    (_node("ReduceSum", ["x"]), None, "reduces every axis"),
    (_node("Transpose", ["x"], perm=[0, 2, 3, 1]), 0, None),
    (_node("Transpose", ["x"], perm=[1, 0, 2, 3]), 1, None),  # the batch moves: followed, not refused
    (_node("Unsqueeze", ["x", _const(np.array([0], np.int64))], out_rank=5), 1, None),
    (_node("Squeeze", ["x", _const(np.array([0], np.int64))], out_rank=3), None, "squeezes the batch axis"),
    (_node("Slice", ["x", _const(np.array([0])), _const(np.array([1])), _const(np.array([1]))]), 0, None),
    (_node("Slice", ["x", _const(np.array([0])), _const(np.array([1])), _const(np.array([0]))]), None,
     "slices the batch axis"),
    (_node("Gather", ["x", _const(np.array(1))], out_rank=3, axis=1), 0, None),
    (_node("Gather", ["x", _const(np.array(1))], out_rank=3, axis=0), None, "gathers along the batch axis"),
    (_node("MatMul", [_const(np.ones((2, 2), np.float32)), "x"], rank=3), None, "the batch in a later input"),
    (_node("Sum", ["x", "z", _const(np.ones((2, 1, 1), np.float32))]), 0, None),
    (_node("Log", ["x"]), 0, None),
    (_node("Pad", ["x", _const(np.array([0, 0, 1, 1, 0, 0, 1, 1]))]), 0, None),
    (_node("Pad", ["x", _const(np.array([1, 0, 0, 0, 0, 0, 0, 0]))]), None, "pads the batch axis"),
    (_node("LayerNormalization", ["x", _const(np.ones(2, np.float32))], axis=-1), 0, None),
    (_node("LayerNormalization", ["x", _const(np.ones(2, np.float32))], axis=0), None, "normalizes over the batch"),
    (_node("Split", ["x"], axis=1), 0, None),
    (_node("Split", ["x"], axis=0), None, "along the batch axis"),
    (_node("ReduceMean", ["x", _const(np.array([1], np.int64))], keepdims=0, out_rank=3), 0, None),
    (_node("Shape", ["x"]), None, "not known to treat each sample on its own"),
    (_node("LSTM", ["x"]), None, "not known to treat each sample on its own"),
])
def test_the_batch_axis_is_followed_op_by_op_and_an_op_that_could_mix_samples_refused(node, axis, why):
    axes, got = _axes(node)
    if why is None:
        assert got is None and axes[node.outputs[0].name] == axis, got
    else:
        assert axes is None and why in got, got


def test_attention_heads_split_off_an_axis_before_the_batch():
    # timm's attention: qkv [N, 65, 3, H, D] → permute(2, 0, 3, 1, 4) → [3, N, H, 65, D] → q = qkv[0]
    x = gs.Variable("x", np.float32, ["N", 65, 3, 6, 64])
    permuted = gs.Variable("qkv", np.float32, [3, "N", 6, 65, 64])
    q = gs.Variable("q", np.float32, ["N", 6, 65, 64])
    nodes = [gs.Node("Transpose", name="permute", attrs={"perm": [2, 0, 3, 1, 4]}, inputs=[x], outputs=[permuted]),
             gs.Node("Gather", name="q", attrs={"axis": 0}, inputs=[permuted, _const(np.array(0))], outputs=[q])]
    axes, why = _axes(*nodes, batch=("x",))
    assert why is None and axes["qkv"] == 1 and axes["q"] == 0


def test_an_axis_removed_before_the_batch_moves_it_back():
    x = gs.Variable("x", np.float32, ["N", 2, 3, 4])
    moved = gs.Variable("moved", np.float32, [2, "N", 3, 4])
    mean = gs.Variable("mean", np.float32, ["N", 3, 4])
    squeezed = gs.Variable("squeezed", np.float32, [2, "N", 3, 4])
    nodes = [gs.Node("Transpose", attrs={"perm": [1, 0, 2, 3]}, inputs=[x], outputs=[moved]),
             gs.Node("ReduceMean", attrs={"keepdims": 0}, inputs=[moved, _const(np.array([0], np.int64))],
                     outputs=[mean])]
    axes, why = _axes(*nodes, batch=("x",))
    assert why is None and axes["moved"] == 1 and axes["mean"] == 0
    unsq = gs.Variable("unsq", np.float32, [1, 2, "N", 3, 4])
    nodes = [nodes[0], gs.Node("Unsqueeze", inputs=[moved, _const(np.array([0], np.int64))], outputs=[unsq]),
             gs.Node("Squeeze", inputs=[unsq, _const(np.array([0], np.int64))], outputs=[squeezed])]
    axes, why = _axes(*nodes, batch=("x",))
    assert why is None and axes["unsq"] == 2 and axes["squeezed"] == 1


def test_a_neuron_kernel_must_read_its_current_batch_first():
    x = gs.Variable("x", np.float32, ["N", 2, 3])
    moved = gs.Variable("moved", np.float32, [2, "N", 3])
    u = gs.Variable("u", np.float32, ["N", 2, 3])
    outs = [gs.Variable(n, np.float32, None) for n in ("k", "u_next", "count")]
    nodes = [gs.Node("Transpose", attrs={"perm": [1, 0, 2]}, inputs=[x], outputs=[moved]),
             gs.Node("AIFCount", name="neuron", domain=KERNEL_DOMAIN, inputs=[moved, u], outputs=outs)]
    assert "a neuron kernel off the batch axis" in _axes(*nodes, batch=("x", "u"))[1]


def _wrapper_graph(extra_reader: str | None = None):
    """A wrapper's bookkeeping as wrap_nonlinear emits it: sum' = sum + x; v = f(sum'/t);
    c = v·t; y = c - prev (states sum → sum', prev → c)."""
    x, s_in, prev, t = (gs.Variable(n, np.float32, ["N", 3]) for n in ("x", "sum", "prev", "t"))
    t.shape = [1]
    s_out, avg, v, c, y = (gs.Variable(n, np.float32, ["N", 3]) for n in ("sum_next", "avg", "v", "c", "y"))
    nodes = [gs.Node("Add", name="accumulate", inputs=[s_in, x], outputs=[s_out]),
             gs.Node("Div", name="average", inputs=[s_out, t], outputs=[avg]),
             gs.Node("Softmax", name="op", attrs={"axis": -1}, inputs=[avg], outputs=[v]),
             gs.Node("Mul", name="times_t", inputs=[v, t], outputs=[c]),
             gs.Node("Sub", name="difference", inputs=[c, prev], outputs=[y])]
    if extra_reader:
        nodes.append(gs.Node("Relu", name="extra", inputs=[gs.Variable(extra_reader)], outputs=[gs.Variable("z")]))
        nodes[-1].inputs[0] = {"sum": s_in, "prev": prev}[extra_reader]
    graph = gs.Graph(nodes=nodes, inputs=[x, s_in, prev, t], outputs=[y, s_out, c])
    from pmsm_compiler.snn_format import State

    info = type("Info", (), {"states": [State("sum", "sum_next", 0.0, "input_sum"),
                                        State("prev", "c", 0.0, "cumulative_output")], "time_input": "t"})()
    return graph, info


def test_a_wrappers_bookkeeping_becomes_time_sum_and_time_diff():
    from pmsm_compiler.runtime.time_batched import _time_readers, _wrapper_plan

    graph, info = _wrapper_graph()
    plan, why = _wrapper_plan(graph, info)
    assert why is None and [(s.kind, node.name) for s, node in plan] == [("input_sum", "accumulate"),
                                                                      ("cumulative_output", "difference")]
    readers, why = _time_readers(graph, info, {})
    assert why is None and sorted((node.name, rank) for node, rank in readers) == [("average", 2), ("times_t", 2)]
    axes, why = batch_axes(graph, {}, ["x", "sum", "prev"])
    assert why is None and axes["y"] == 0 and axes["c"] == 0


@pytest.mark.parametrize("reader,why", [("sum", "is not one Add of the sum and the input"),
                                        ("prev", "is not one Sub of the cumulative output and it")])
def test_a_wrapper_state_read_elsewhere_is_refused(reader, why):
    from pmsm_compiler.runtime.time_batched import _wrapper_plan

    graph, info = _wrapper_graph(extra_reader=reader)
    assert why in _wrapper_plan(graph, info)[1]


def test_a_large_constant_is_checked_by_its_shape_without_its_values():
    # the runtime's step models hold large initializers as references to arrays (weights.split): a
    # check that read their values would fail on them
    from onnx import helper as h

    ref = onnx.TensorProto(name="pos", data_type=TensorProto.FLOAT, dims=[1, 65, 384])
    ref.data_location = TensorProto.EXTERNAL
    ref.external_data.add(key="location", value="pmsm-weights-in-memory")

    def lazy_constant():
        graph = h.make_graph([h.make_node("Identity", ["pos"], ["y"])], "g", [],
                             [h.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[ref])
        return gs.import_onnx(h.make_model(graph)).tensors()["pos"]

    lazy = lazy_constant()
    assert isinstance(lazy, gs.Constant)
    assert _axes(_node("Add", ["x", lazy], rank=3))[1] is None
    ref.dims[0] = 4
    lazy = lazy_constant()
    assert "pos has 4 elements along the batch axis" in _axes(_node("Add", ["x", lazy], rank=3))[1]


def test_over_time_and_split_rows_are_step_major():
    x = np.arange(6, dtype=np.float32).reshape(3, 2)
    tiled = over_time(x, 4)
    assert tiled.shape == (12, 2) and np.array_equal(tiled[3:6], x) and np.array_equal(tiled[9:], x)
    rows = split_rows(np.arange(12).reshape(12, 1), 4)
    assert rows.shape == (4, 3, 1) and rows[2, 1, 0] == 7  # step 2, sample 1: row 2·3 + 1


def _conv_pqa_classifier(rng, conv_weight_shape, sample_shape, middle, inits=()):
    """x [N, *sample_shape] → Conv (padded 1) → PQA → ``middle`` (q → f, [N, channels]) → Gemm →
    y [N, 5], quantizer functions added, shape-inferred."""
    from pmsm_compiler.ops import add_functions
    from pmsm_compiler.ops.quantizers import quantizer_functions

    channels = conv_weight_shape[0]
    inits = [onnx.numpy_helper.from_array(rng.standard_normal(conv_weight_shape).astype(np.float32), "w"),
             onnx.numpy_helper.from_array(np.array(3.0, np.float32), "lam"),
             onnx.numpy_helper.from_array(rng.standard_normal((5, channels)).astype(np.float32), "fc"), *inits]
    nodes = [helper.make_node("Conv", ["x", "w"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("PQA", ["h", "lam"], ["q"], domain="pmsm", L=8, alpha=-0.25, beta=1.0),
             *middle, helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", *sample_shape])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])], inits)
    ann = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    add_functions(ann, quantizer_functions())
    return onnx.shape_inference.infer_shapes(ann, strict_mode=True)


def test_a_pass_keeps_every_sample_at_its_step_by_step_alignment():
    """onnxruntime's ReduceSum/ReduceMean over trailing axes round a sample's sum by its address
    (fuzz seed 52032: a ReduceMean of 2x7x3 spikes, 168 bytes a sample, differed in the last bit
    at t = 2 of a pass of 3 samples). A pass puts sample n of step t at row t·N + n: it runs only
    where N times those bytes is a multiple of 64, else step by step, with the reason."""
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.runtime import SNNSession
    from pmsm_compiler.runtime.time_batched import ALIGNMENT_BYTES, misaligned

    rng = np.random.default_rng(0)
    ann = _conv_pqa_classifier(rng, (2, 4, 2, 2), [4, 6, 2], [helper.make_node("ReduceMean", ["q", "axes"], ["f"], keepdims=0)],
                               [onnx.numpy_helper.from_array(np.array([2, 3], np.int64), "axes")])
    assert misaligned(3, {168}) == 168 and misaligned(8, {168}) is None and ALIGNMENT_BYTES == 64
    assert steps_per_run(3, 8, 16, DEFAULT_TIME_BATCH_BYTES, 4, {168}) == 1
    assert steps_per_run(8, 8, 16, DEFAULT_TIME_BATCH_BYTES, 4, {168}) == 8
    for mode in ("folded", "exact"):
        model = compile_model(ann, mode).model
        session = SNNSession(model)
        assert session.time_batched, session.time_batched_note
        report = session.time_batch_report(3, 5)
        assert report["steps_per_run"] == 1 and "168 bytes" in report["reason"]
        assert session.time_batch_report(8, 5) == {"steps_per_run": 5, "reason": None}
        for n in (3, 8, 16):
            x = rng.standard_normal((n, 4, 6, 2)).astype(np.float32) * 2
            a = SNNSession(model, time_batch=1).run_batch(x, 5, keep_outputs=True, sample_counters=True)
            b = session.run_batch(x, 5, keep_outputs=True, sample_counters=True)
            for field in FIELDS:
                np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=f"{mode}, {n}: {field}")


def test_aligned_sample_bytes_of_the_sums_that_follow_the_address():
    from pmsm_compiler.runtime.time_batched import aligned_sample_bytes

    x = gs.Variable("x", np.float32, ["N", 2, 7, 3])
    mean = gs.Node("ReduceMean", "mean", inputs=[x, _const(np.array([2, 3]))], outputs=[gs.Variable("m", np.float32)])
    peak = gs.Node("ReduceMax", "peak", inputs=[x], outputs=[gs.Variable("p", np.float32)])
    graph = gs.Graph(nodes=[mean, peak], inputs=[x], outputs=mean.outputs + peak.outputs)
    shapes = {"x": ["N", 2, 7, 3]}
    assert aligned_sample_bytes(graph, {"x": 0}, shapes) == ({2 * 7 * 3 * 4}, None)
    assert aligned_sample_bytes(gs.Graph(nodes=[peak], inputs=[x], outputs=peak.outputs), {"x": 0}, shapes) == (set(), None)
    sizes, why = aligned_sample_bytes(graph, {"x": 1}, shapes)  # the batch moved by a transpose
    assert sizes is None and "mean: ReduceMean" in why
    sizes, why = aligned_sample_bytes(graph, {"x": 0}, {"x": ["N", 2, None, 3]})
    assert sizes is None and "static per-sample shape" in why


def test_a_fixed_batch_matmul_of_rank3_activations_refuses_passes():
    """onnxruntime fuses MatMul + bias into a Gemm on a fixed-batch step's static shapes, not on a
    pass's (fuzzer seeds 60800, 61809, 61860): such a step runs step by step; a dynamic batch or
    rank-2 activations do not."""
    from pmsm_compiler.runtime.time_batched import _static_shape_fusion

    def graph(rank):
        x = gs.Variable("x", np.float32, [1] + [4] * (rank - 1))
        mm = gs.Node("MatMul", "mm", inputs=[x, _const(np.ones((4, 3), np.float32))],
                     outputs=[gs.Variable("y", np.float32)])
        return gs.Graph(nodes=[mm], inputs=[x], outputs=mm.outputs)

    assert "mm: a MatMul of rank-3 activations" in _static_shape_fusion(graph(3), {"x": 0}, {"x": [1, 4, 4]}, ["x"])
    assert _static_shape_fusion(graph(3), {"x": 0}, {"x": ["N", 4, 4]}, ["x"]) is None  # dynamic batch
    assert _static_shape_fusion(graph(2), {"x": 0}, {"x": [1, 4]}, ["x"]) is None  # rank 2: fused either way


def test_an_op_that_rounds_by_position_reads_no_batch_in_a_pass():
    """onnxruntime computes Log and Softplus with vector code on the body of each block its threads
    split the tensor into and scalar code on the rest, which round differently in the last bit, and
    the blocks follow the tensor's length (fuzz seed 71475: a Log before a GlobalAveragePool, a
    sample at t = 4 of a pass of 6 steps; bench/position_sensitivity.py). A pass changes the length:
    a step graph where such an op reads the batch runs step by step, with the reason."""
    from pmsm_compiler.runtime.time_batched import POSITION_SENSITIVE_OPS, position_sensitive

    assert {"Log", "Softplus", "Elu", "Selu", "Celu", "Mish"} <= POSITION_SENSITIVE_OPS
    x = gs.Variable("x", np.float32, ["N", 16])
    log = gs.Node("Log", "log", inputs=[x], outputs=[gs.Variable("l", np.float32)])
    why = position_sensitive(gs.Graph(nodes=[log], inputs=[x], outputs=log.outputs), {"x": 0})
    assert "log: Log, whose result for an element depends on where it sits" in why
    w = _const(np.full(4, 2.0, np.float32))
    on_weights = gs.Node("Log", "logw", inputs=[w], outputs=[gs.Variable("lw", np.float32)])
    assert position_sensitive(gs.Graph(nodes=[on_weights], inputs=[x], outputs=on_weights.outputs), {"x": 0}) is None


@pytest.mark.parametrize("op", ["Log", "Softplus", "Elu", "Selu", "Celu", "Mish"])
def test_a_model_with_a_position_sensitive_op_runs_step_by_step_and_agrees(op):
    rng = np.random.default_rng(1)
    middle = [helper.make_node("Add", ["q", "one"], ["p"]),  # > 0: Log's argument
              helper.make_node(op, ["p"], ["s"]),
              helper.make_node("GlobalAveragePool", ["s"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"])]
    ann = _conv_pqa_classifier(rng, (4, 3, 3, 3), [3, 8, 8], middle,
                               [onnx.numpy_helper.from_array(np.array(1.5, np.float32), "one")])
    _default_runs_equal_step_by_step(ann, rng, refused=f"{op}, whose result for an element depends")


@pytest.mark.parametrize("op", ["HardSwish", "PRelu", "Softsign", "ThresholdedRelu"])
def test_an_activation_measured_independent_of_position_runs_layer_by_layer_and_agrees(op):
    """Activations between quantizers that ``bench/position_sensitivity.py`` measured independent of
    where an element sits (on both signs) run in passes, bit for bit as step by step."""
    rng = np.random.default_rng(2)
    inits = [onnx.numpy_helper.from_array(np.array([[[0.1]], [[0.2]], [[0.3]]], np.float32), "slope")]
    middle = [helper.make_node(op, ["q", "slope"] if op == "PRelu" else ["q"], ["s"]),
              helper.make_node("GlobalAveragePool", ["s"], ["g"]),
              helper.make_node("Flatten", ["g"], ["f"])]
    ann = _conv_pqa_classifier(rng, (3, 3, 3, 3), [3, 8, 8], middle, inits if op == "PRelu" else [])
    _default_runs_equal_step_by_step(ann, rng)


def test_a_comparison_region_runs_layer_by_layer_and_agrees():
    """A comparison of spikes with its Where (a model-local function in ``pmsm.region``) is
    elementwise: the runtime follows the batch axis through it and runs passes, bit for bit as
    step by step."""
    from pmsm_compiler.compiler import compile_model

    rng = np.random.default_rng(3)
    inits = [onnx.numpy_helper.from_array(np.array(v, np.float32), n) for n, v in (("zero", 0.0), ("slope", 0.1))]
    middle = [helper.make_node("Greater", ["q", "zero"], ["m"]), helper.make_node("Mul", ["q", "slope"], ["sq"]),
              helper.make_node("Where", ["m", "q", "sq"], ["s"]),
              helper.make_node("GlobalAveragePool", ["s"], ["g"]), helper.make_node("Flatten", ["g"], ["f"])]
    ann = _conv_pqa_classifier(rng, (3, 3, 3, 3), [3, 8, 8], middle, inits)
    for mode in ("folded", "exact"):
        assert any(n.domain == "pmsm.region" for n in compile_model(ann, mode).model.graph.node)
    _default_runs_equal_step_by_step(ann, rng)


def _default_runs_equal_step_by_step(ann, rng, refused: str | None = None):
    """Compile ``ann`` in both modes; the default session runs in passes (``refused``: step by step,
    with this in its note) and equals a step-by-step run of 7 steps, bit for bit."""
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.runtime import SNNSession

    for mode in ("folded", "exact"):
        model = compile_model(ann, mode).model
        session = SNNSession(model)
        if refused:
            assert not session.time_batched and refused in session.time_batched_note
        else:
            assert session.time_batched, session.time_batched_note
        x = rng.standard_normal((3, 3, 8, 8)).astype(np.float32) * 2
        a = SNNSession(model, time_batch=1).run_batch(x, 7, keep_outputs=True, sample_counters=True)
        b = session.run_batch(x, 7, keep_outputs=True, sample_counters=True)
        for field in FIELDS:
            np.testing.assert_array_equal(getattr(b, field), getattr(a, field), err_msg=f"{mode}: {field}")
