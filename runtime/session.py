"""SNNSession: run a compiled SNN for T timesteps in onnxruntime with state kept in ORT buffers.

The compiled model computes one timestep (see ``pmsm_compiler.compiler``). The session

- splits off the *static prologue*: every node that depends only on the network input (e.g. the
  first convolution and its scaling under rate coding). It runs once per batch, not once per
  step; its results stay in onnxruntime buffers and are bound as inputs of every step;
- keeps membrane and wrapper states in onnxruntime buffers between steps (IOBinding), so no large
  tensor is copied through Python. A state whose every reader runs before the node that writes its
  next value (a neuron's membrane: read by the integrate ``Add``, rewritten by the reset ``Sub``)
  is updated *in place*: one buffer, bound as both the step's input and its output, as
  onnxruntime's own past/present KV-cache buffer sharing does (``states_safe_in_place``). Any
  other state ping-pongs between two buffers;
- copies back only the small per-step outputs (network outputs, the int64 spike counts and, in
  models compiled with them, the int64 counters of every counting rule);
- executes each step in onnxruntime's priority-based order, so that every layer's reset and spike
  count run right after it fires, while its tensors are in cache (``make_session(priority_order=)``);
- specialises the step model by position in time (``step_variant``): the first step reads the
  initial states as constants, the last step computes no next state (at T = 1 the one step is
  both), so a T = 1 run does what the ANN does plus the spike counting;
- on the CPU, runs every neuron layer with its spike count as one fused kernel
  (``pmsm_compiler.kernels``, rewritten in by ``passes.fuse_neuron_kernels``): the same float32
  operations in one pass over memory instead of six, bit-identical results. ``kernels="auto"``
  (default) uses them when the library builds, and falls back to the ONNX function bodies
  otherwise; ``"on"`` requires them, ``"off"`` never uses them.

The same code runs on CPU and on the CUDA execution provider (buffers then live on the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from pmsm_compiler.compiler import read_snn_info
from pmsm_compiler.errors import InputError
from pmsm_compiler.limits import check_timesteps
from pmsm_compiler.verify import declared_batch, input_dtype, make_session, padded_batches


@dataclass
class BatchResult:
    """Outputs of one batch over T steps."""

    mean_outputs: np.ndarray  # first network output averaged over the T steps (rate coding)
    predictions_by_t: np.ndarray  # int64 [T, N]: argmax of the average up to step t
    spikes: np.ndarray  # int64 [T, N, layers]: Σ|k| per layer, per sample, per step
    outputs_by_t: np.ndarray | None = None  # [T, N, ...] per-step outputs, when requested
    # int64 [T, layers, counters]: every counting rule (SNNSession.counter_names) per layer and step,
    # summed over the batch's samples; None for a model compiled before the counters existed
    counters: np.ndarray | None = None
    # int64 [T, N, layers, counters]: the same per sample, when requested (sample_counters=True)
    counters_by_sample: np.ndarray | None = None


#: (static producer, state-dependent consumer) pairs that onnxruntime fuses into one kernel (from
#: level "basic": Conv+BatchNormalization; "all": Conv+Add, the residual, in the NCHWc rewrite).
#: The producer stays in the step: a session boundary between them would stop a fusion the ANN has.
FUSED_PAIRS = {("Conv", "Add"), ("Conv", "Sum"), ("Conv", "BatchNormalization"), ("BatchNormalization", "Add"),
               ("BatchNormalization", "Sum")}


def split_static_prologue(model: onnx.ModelProto, info: dict):
    """(prologue, step) models, or (None, model) when nothing static is worth splitting off.

    The prologue maps the network input to the *boundary* tensors: static tensors read by
    state-dependent nodes. The step model reads those instead of recomputing them.
    """
    graph = gs.import_onnx(model)
    input_names = {i["name"] for i in info["inputs"]}
    dynamic = {s["input"] for s in info["states"]}
    if info.get("time_input"):
        dynamic.add(info["time_input"])
    graph.toposort()
    static_nodes, dyn_tensors = [], set(dynamic)
    for node in graph.nodes:
        if any(t.name in dyn_tensors for t in node.inputs):
            dyn_tensors.update(t.name for t in node.outputs)
        else:
            static_nodes.append(node)
    # A static Conv (or Conv → BatchNormalization) whose output a state-dependent Add reads stays in
    # the step (FUSED_PAIRS): onnxruntime fuses such an Add (a residual) into the Conv, which rounds
    # differently, and a session boundary between them would stop that fusion where the ANN has it.
    while True:
        static_ids = {id(n) for n in static_nodes}
        fused = [n for n in static_nodes if any(
            (n.op, c.op) in FUSED_PAIRS and id(c) not in static_ids for t in n.outputs for c in t.outputs)]
        if not fused:
            break
        for n in fused:
            static_nodes.remove(n)
            dyn_tensors.update(t.name for t in n.outputs)
        # what reads a tensor now computed in the step is state-dependent too
        for node in graph.nodes:
            if id(node) in {id(m) for m in static_nodes} and any(t.name in dyn_tensors for t in node.inputs):
                static_nodes.remove(node)
                dyn_tensors.update(t.name for t in node.outputs)
    heavy = [n for n in static_nodes if n.op in ("Conv", "Gemm", "MatMul", "ConvTranspose")]
    if not heavy:
        return None, model
    static_ids = {id(n) for n in static_nodes}
    boundary = []
    direct_inputs = set()  # network inputs read by state-dependent nodes (e.g. an input skip connection)
    for node in graph.nodes:
        if id(node) in static_ids:
            continue
        for t in node.inputs:
            if t.name in input_names:
                direct_inputs.add(t.name)
            elif (t.name and not isinstance(t, gs.Constant) and t.name not in dyn_tensors
                    and t not in boundary):
                boundary.append(t)
    outputs_static = [t for t in graph.outputs if t.name not in dyn_tensors and t.name not in input_names]
    if outputs_static:
        return None, model  # an output that never changes: keep the simple form
    if any(t.shape is None or t.dtype is None for t in boundary):
        return None, model
    pro = graph.copy()
    pro_tensors = pro.tensors()
    pro.inputs = [pro_tensors[n] for n in input_names]
    pro.outputs = [pro_tensors[t.name] for t in boundary]
    pro.cleanup(remove_unused_graph_inputs=True).toposort()
    step = graph.copy()
    step_tensors = step.tensors()
    for t in boundary:
        st = step_tensors[t.name]
        st.inputs.clear()  # now a graph input
    step.inputs = [step_tensors[t.name] for t in boundary] + [t for t in step.inputs
                                                              if t.name not in input_names or t.name in direct_inputs]
    step.cleanup(remove_unused_graph_inputs=False).toposort()
    pro_model = gs.export_onnx(pro)
    step_model = gs.export_onnx(step)
    for m in (pro_model, step_model):
        m.ir_version = model.ir_version
        del m.metadata_props[:]
    return pro_model, step_model


def _without_output(model: onnx.ModelProto, name: str) -> onnx.ModelProto:
    """``model`` without graph output ``name`` and the nodes that only fed it."""
    graph = gs.import_onnx(model)
    graph.outputs = [t for t in graph.outputs if t.name != name]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    out = gs.export_onnx(graph)
    out.ir_version = model.ir_version
    return out


def step_variant(step: onnx.ModelProto, info: dict, first: bool, last: bool) -> onnx.ModelProto:
    """The step model specialised for where it runs in time.

    first: every state still holds its initial value, so the state inputs become constant
    scalars (½ for membranes, 0 for wrapper sums) — the same values the broadcast initial
    tensors hold, so the same results, without reading a state tensor.
    Each temporal wrapper is bypassed at the first step: its op reads the inputs themselves
    (S_1/1 = x) and its consumers read the op's value (F_1 − F_0 = f(x)), so that onnxruntime
    sees the ANN's own graph around the op and optimizes it the same way (a MatMul followed by a
    Mul by a constant is fused into one kernel, which rounds differently from the two ops). That
    holds fully at T = 1 (first and last): a first step that also computes the next states reads
    the op's value a second time, which can stop such a fusion, so the first step of a longer run
    can differ from a T = 1 run in the last bit (the T = 1 run is the one equal to the ANN).
    last: nobody reads the next states, so they are dropped, and the neurons use their
    ``*Final`` functions without the reset (onnxruntime inlines a function's whole body, so an
    unused output would still be computed). At T = 1 the single step is both first and last.
    """
    from pmsm_compiler.ops import DOMAIN, add_functions
    from pmsm_compiler.ops.neurons import FINAL_STEP_OPS, final_step_functions

    graph = gs.import_onnx(step)
    if first:
        tensors = graph.tensors()
        for state in info["states"]:
            var = tensors[state["input"]]
            const = gs.Constant(state["input"] + ".initial", np.array(state["init"], dtype=np.float32))
            for node in list(var.outputs):
                node.inputs = [const if t is var else t for t in node.inputs]
        names = {s["input"] for s in info["states"]}
        graph.inputs = [t for t in graph.inputs if t.name not in names]
        _bypass_wrappers(graph, info)
    if last:
        state_outputs = {s["output"] for s in info["states"]}
        graph.outputs = [t for t in graph.outputs if t.name not in state_outputs]
        for node in graph.nodes:
            if node.domain == DOMAIN and node.op in FINAL_STEP_OPS and len(node.outputs) == 2:
                node.op = FINAL_STEP_OPS[node.op]
                node.outputs = node.outputs[:1]
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph)
    model.ir_version = step.ir_version
    if last:
        add_functions(model, final_step_functions())
    del model.metadata_props[:]
    return model


def _bypass_wrappers(graph, info: dict) -> None:
    tensors = graph.tensors()
    for w in info["wrappers"]:
        value, out = tensors.get(w.get("value")), tensors.get(w.get("output"))
        if value is None or out is None or len(value.inputs) != 1:
            continue  # a model compiled before wrappers recorded their tensors: keep the wrapper
        op = value.inputs[0]
        for i, name in zip(w["input_index"], w["inputs"]):
            op.inputs[i] = tensors[name]
        if out not in graph.outputs:
            for consumer in list(out.outputs):
                consumer.inputs = [value if t is out else t for t in consumer.inputs]


def states_safe_in_place(step: onnx.ModelProto, info: dict) -> set[str]:
    """State inputs whose buffer may receive the state's next value within the same step.

    Safe when every node that reads the state (after inlining the neuron and wrapper functions,
    which is what onnxruntime executes) is a strict ancestor of the node that writes the next
    value: any execution order then finishes every read before the write starts, so binding one
    buffer as both input and output changes no result. A writer that itself reads the state, a
    reader off the path to the writer, or a state read inside a subgraph is refused.
    """
    from onnx import inliner

    graph = inliner.inline_local_functions(step).graph
    nodes = list(graph.node)
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in nodes for a in n.attribute):
        return set()
    producer = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    readers: dict[str, list[int]] = {}
    for i, n in enumerate(nodes):
        for name in set(n.input):
            readers.setdefault(name, []).append(i)
    graph_outputs = {o.name for o in graph.output}
    safe = set()
    for state in info["states"]:
        writer = producer.get(state["output"])
        reads = readers.get(state["input"], [])
        if writer is None or not reads or state["input"] in graph_outputs:
            continue
        upstream, todo = set(), [writer]
        while todo:  # strict ancestors of the writer
            for name in nodes[todo.pop()].input:
                j = producer.get(name)
                if j is not None and j not in upstream:
                    upstream.add(j)
                    todo.append(j)
        if all(r in upstream for r in reads):
            safe.add(state["input"])
    return safe


class SNNSession:
    """A compiled SNN ready to run: ``run_batch(x, timesteps)`` → :class:`BatchResult`."""

    def __init__(self, model, providers=None, opt_level: str = "all", threads: int = 0, split_static: bool = True,
                 priority_order: bool = True, in_place: bool = True, kernels: str = "auto", counters: bool = True):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from pmsm_compiler.loading import load_model

            model = load_model(model, static_inputs=False)
        info = read_snn_info(model)
        if info is None:
            raise InputError("not a compiled SNN model (no 'pmsm.snn' metadata): compile it with pmsm-compile first")
        if info.get("format") != "pmsm-snn" or int(info.get("format_version", 0)) > 1:
            raise InputError(f"unsupported compiled-model format {info.get('format')} v{info.get('format_version')}")
        self.info = info
        self.layers = info["layers"]
        #: the counting rules the model computes (its ``pmsm_spike_counters`` columns), or None for a
        #: model compiled before they existed, or with ``counters=False``: the step graphs then drop
        #: them (onnxruntime computes every graph output, bound or not; on the neurons' ONNX bodies
        #: the counters cost a third of a step, in the fused kernels nothing measurable)
        self.counters_output = info.get("counters_output") if counters else None
        self.counter_names = list(info["counters"]) if self.counters_output else None
        self.input_name = info["inputs"][0]["name"]
        self.input_shape = info["inputs"][0]["shape"]
        self.fixed_batch = declared_batch(self.input_shape)
        self.output_names = info["outputs"]
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise InputError(f"execution provider(s) not available: {', '.join(missing)}; "
                                 f"available: {', '.join(available)}")
        self.providers = list(providers or ["CPUExecutionProvider"])
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.kernels = self._kernel_library(kernels)
        if info.get("counters_output") and not counters:
            model = _without_output(model, info["counters_output"])
        prologue, step = split_static_prologue(model, info) if split_static else (None, model)
        self.prologue = (make_session(prologue, opt_level, self.providers, threads, shared_arena=True,
                                      qdq_fusion=False)
                         if prologue is not None else None)
        self.priority_order = priority_order
        self.fused_layers = 0
        self.unfused_notes: list[str] = []
        self._step_model, self._opt_level, self._threads = step, opt_level, threads
        self.step = self._make_step_session(step)
        self._variants = {(False, False): self.step}
        self._step_inputs = {i.name: i for i in self.step.get_inputs()}
        # the graph's own input type (not the metadata's): what onnxruntime will accept
        reader = self.prologue if self.prologue is not None else self.step
        arg = next((a for a in reader.get_inputs() if a.name == self.input_name), None)
        self.input_dtype = input_dtype({"name": self.input_name, "dtype": arg.type[7:-1] if arg else None})
        self._prologue_outputs = [o.name for o in self.prologue.get_outputs()] if self.prologue else []
        self._states = info["states"]
        # Decided on the unfused step: a fused neuron kernel reads each membrane element before it
        # writes the next value to the same index, so fusing keeps a state safe to update in place.
        self.in_place_states = states_safe_in_place(step, info) if in_place else set()
        # the step reads the network input itself when unsplit, or when a state-dependent node reads it
        self._step_reads_input = self.prologue is None or self.input_name in self._step_inputs
        expected = set(self._prologue_outputs) | ({self.input_name} if self._step_reads_input else set())
        expected |= {s["input"] for s in self._states}
        if info.get("time_input"):
            expected.add(info["time_input"])
        if set(self._step_inputs) != expected:
            raise InputError(f"compiled model inputs {sorted(self._step_inputs)} do not match its metadata")

    def _kernel_library(self, kernels: str) -> str | None:
        if kernels not in ("auto", "on", "off"):
            raise InputError(f"kernels must be auto, on or off, got {kernels!r}")
        self._kernels_choice = kernels
        if kernels == "off":
            return None
        if self.device != "cpu":
            if kernels == "on":
                raise InputError("the fused neuron kernels run on the CPU execution provider only")
            return None
        from pmsm_compiler import kernels as kernel_lib

        path = kernel_lib.library()
        if path is None and kernels == "on":
            raise InputError(f"fused neuron kernels unavailable: {kernel_lib.status()['reason']}")
        return path

    def kernel_report(self) -> dict:
        """What ran the neurons: {"used": bool, "layers_fused": int, "reason": str | None,
        "unfused": [why a neuron layer kept its ONNX body]}."""
        reason = None
        if not self.kernels:
            from pmsm_compiler import kernels as kernel_lib

            reason = (self._kernels_choice == "off" and "--kernels off") or (
                self.device != "cpu" and f"not on {self.providers[0]}") or kernel_lib.status()["reason"]
        return {"used": bool(self.kernels), "layers_fused": self.fused_layers, "reason": reason,
                "unfused": list(self.unfused_notes)}

    def _make_step_session(self, model: onnx.ModelProto):
        if self.kernels:
            from pmsm_compiler.passes.fuse_neuron_kernels import fuse_model

            model, fused, notes = fuse_model(model)
            self.fused_layers = max(self.fused_layers, fused)
            self.unfused_notes = sorted(set(self.unfused_notes) | set(notes))
        # qdq_fusion off: an SNN's DequantizeLinear (exact mode's output op of a Q/DQ neuron) stands
        # for k·s; integer-kernel fusion has nothing to gain there, and can fail on it (onnxruntime
        # 1.32 at opset 21: QuantizeLinear(int8) → DQ → Reshape)
        return make_session(model, self._opt_level, self.providers, self._threads, shared_arena=True, qdq_fusion=False,
                            priority_order=self.priority_order, custom_ops_library=self.kernels)

    def session_for(self, first: bool, last: bool):
        """The onnxruntime session for a step at this position in time (created on first use)."""
        key = (first, last)
        if key not in self._variants:
            self._variants[key] = self._make_step_session(step_variant(self._step_model, self.info, first, last))
        return self._variants[key]

    def _ortvalue(self, array):
        import onnxruntime as ort

        return ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array), self.device, 0)

    def check_input(self, x: np.ndarray):
        if x.dtype != self.input_dtype:
            raise InputError(f"input dtype {x.dtype} does not match the model's {self.input_dtype}")
        expected = self.input_shape[1:] if self.input_shape else None
        if expected and all(isinstance(d, int) for d in expected) and list(x.shape[1:]) != list(expected):
            raise InputError(f"input shape {list(x.shape[1:])} does not match the model's {list(expected)}")

    def run_batch(self, x: np.ndarray, timesteps: int, keep_outputs: bool = False,
                  sample_counters: bool = False) -> BatchResult:
        """Run ``x`` for T steps. A model declared with a fixed batch size B takes any number of
        samples: they run in batches of exactly B, the last one padded (the padding is dropped).
        ``sample_counters`` also keeps the counters per sample (``counters_by_sample``: T·N·layers·7
        int64, so off by default)."""
        timesteps = check_timesteps(timesteps)
        self.check_input(x)
        if self.fixed_batch is None or len(x) == self.fixed_batch:
            return self._run_steps(x, timesteps, keep_outputs, sample_counters)
        parts = [(self._run_steps(xb, timesteps, keep_outputs, sample_counters, real=n), n)
                 for xb, n in padded_batches(x, self.fixed_batch)]
        counted = self.counters_output is not None
        return BatchResult(
            np.concatenate([r.mean_outputs[:n] for r, n in parts]),
            np.concatenate([r.predictions_by_t[:, :n] for r, n in parts], axis=1),
            np.concatenate([r.spikes[:, :n] for r, n in parts], axis=1),
            np.concatenate([r.outputs_by_t[:, :n] for r, n in parts], axis=1) if keep_outputs else None,
            sum(r.counters for r, _ in parts) if counted else None,
            np.concatenate([r.counters_by_sample[:, :n] for r, n in parts], axis=1)
            if counted and sample_counters else None)

    def _run_steps(self, x: np.ndarray, timesteps: int, keep_outputs: bool, sample_counters: bool = False,
                   real: int | None = None) -> BatchResult:
        """``real``: how many leading samples are real (the rest is padding, left out of ``counters``)."""
        n = x.shape[0]
        x_value = self._ortvalue(x)
        if self.prologue is not None:
            pb = self.prologue.io_binding()
            pb.bind_ortvalue_input(self.input_name, x_value)
            for name in self._prologue_outputs:
                pb.bind_output(name, self.device)
            self.prologue.run_with_iobinding(pb)
            static_values = dict(zip(self._prologue_outputs, pb.get_outputs()))
            if self._step_reads_input:
                static_values[self.input_name] = x_value
        else:
            static_values = {self.input_name: x_value}
        states = {}  # state input name -> the OrtValue the next step reads
        spare = {}  # ping-pong states: state input name -> the buffer the next step writes
        out_sum = None
        preds = np.empty((timesteps, n), np.int64)
        spikes = np.empty((timesteps, n, len(self.layers)), np.int64)
        counted = self.counters_output is not None
        real = n if real is None else real
        if counted:
            counters = np.empty((timesteps, len(self.layers), len(self.counter_names)), np.int64)
            by_sample = (np.empty((timesteps, n, len(self.layers), len(self.counter_names)), np.int64)
                         if sample_counters else None)
        per_step = [] if keep_outputs else None
        time_name = self.info.get("time_input")
        k = len(self.output_names)
        for t in range(1, timesteps + 1):
            first, last = t == 1, t == timesteps
            session = self.session_for(first, last)
            b = session.io_binding()
            for name, value in static_values.items():
                b.bind_ortvalue_input(name, value)
            if not first:
                for s in self._states:
                    b.bind_ortvalue_input(s["input"], states[s["input"]])
            if time_name:
                b.bind_cpu_input(time_name, np.array([t], np.float32))
            for name in self.output_names:
                b.bind_output(name, "cpu")
            b.bind_output(self.info["spike_counts_output"], "cpu")
            if counted:
                b.bind_output(self.counters_output, "cpu")
            if not last:
                for s in self._states:
                    if not first and s["input"] in self.in_place_states:
                        target = states[s["input"]]  # one buffer, read then rewritten in place
                    else:
                        target = spare.get(s["input"])
                    if target is not None:
                        b.bind_ortvalue_output(s["output"], target)
                    else:  # first step: onnxruntime allocates the full-size state
                        b.bind_output(s["output"], self.device)
            session.run_with_iobinding(b)
            outs = b.get_outputs()
            step_out = outs[0].numpy()
            spikes[t - 1] = outs[k].numpy()
            first_state = k + 1
            if counted:
                step_counters = outs[k + 1].numpy()
                counters[t - 1] = step_counters[:real].sum(axis=0)
                if by_sample is not None:
                    by_sample[t - 1] = step_counters
                first_state += 1
            if not last:
                new_states = {s["input"]: v for s, v in zip(self._states, outs[first_state:])}
                if not first:
                    # Ping-pong: the buffer this step read (full-size from t = 2 on) receives the
                    # output of the step after.
                    spare = {name: states[name] for name in states if name not in self.in_place_states}
                states = new_states
            out_sum = step_out.astype(np.float64) if out_sum is None else out_sum + step_out
            if keep_outputs:
                per_step.append(step_out)
            preds[t - 1] = (out_sum.reshape(n, -1)).argmax(1) if step_out.ndim >= 2 else 0
        mean = (out_sum / timesteps).astype(np.float32)
        return BatchResult(mean, preds, spikes, np.stack(per_step) if keep_outputs else None,
                           counters if counted else None, by_sample if counted else None)
