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
  (``pmsm_compiler.kernels``, rewritten in by ``runtime.fuse_neuron_kernels``): the same float32
  operations in one pass over memory instead of six, bit-identical results. ``kernels="auto"``
  (default) uses them when the library builds, and falls back to the ONNX function bodies
  otherwise; ``"on"`` requires them, ``"off"`` never uses them;
- with those kernels at level "all", runs onnxruntime's own optimized step graph rewritten around
  them (``runtime.optimized_step``): the elementwise ops onnxruntime leaves beside a neuron
  (residual Add, exact mode's Div and Mul by θ) run inside it, and the neurons read and write the
  blocked NCHWc tensors of the convolutions, without the layout conversions around each of them;
  bit-identical results (``rewrite_optimized=False`` runs the optimized graph as it is);
- reuses one IOBinding for the middle steps when every state is updated in place;
- runs the T steps of a small batch layer by layer (``runtime.time_batched``): up to ``time_batch``
  steps per run of one session on T·N rows, each fused neuron kernel (and each temporal wrapper's
  bookkeeping) running its steps in order, bit-identical to step by step, as many steps a run as keep
  it within ``time_pass_bytes``; where the model cannot (``time_batched_note``) or one step of the
  batch already fills the caches (``time_batch_bytes``; default: twice a core's L2), step by step;
- runs the one step of a T = 1 run of an exact-mode model in the ANN's form
  (``runtime.ann_form_step``, CPU): the whole model, the neurons as the quantizer's own ops, the
  spike counting attached after onnxruntime's optimization, so that onnxruntime rewrites it as
  it rewrites the ANN (``ann_form=False``: the usual first-and-last step).

``profile_prefix`` records onnxruntime's per-node trace of every session (``end_profiling``).

The same code runs on CPU and on the CUDA execution provider (buffers then live on the GPU).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from pmsm_compiler.errors import InputError
from pmsm_compiler.limits import DEFAULT_TIME_BATCH, DEFAULT_TIME_PASS_BYTES, check_timesteps
from pmsm_compiler.sessions import declared_batch, make_session, padded_batches
from pmsm_compiler.snn_format import DataInput, read_snn_info
from pmsm_compiler.weights import split

from .step_graphs import export_variant, split_static_prologue, states_safe_in_place, variant_graph, without_output
from .time_batched import ALIGNMENT_BYTES, default_time_batch_bytes, misaligned, steps_per_run


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


class SNNSession:
    """A compiled SNN ready to run: ``run_batch(x, timesteps)`` → :class:`BatchResult`.

    ``keep_weights``: the weights read once from ``model`` and held as arrays for every session
    built later (default; ``model`` may then change or go); False: each session build reads the
    ones it needs from ``model``, which must then stay unchanged while this session is used: one
    copy of the weights less beside a caller that holds ``model`` anyway (the verification, which
    builds one step), each further build reading them again.

    ``weights_folder``: the folder of the files ``model``'s external-data references name (a model
    whose weights are in a file it was written to, ``weights.file_references``): onnxruntime maps
    them from there, and no session build copies them through Python."""

    def __init__(self, model, providers=None, opt_level: str = "all", threads: int = 0, split_static: bool = True,
                 priority_order: bool = True, in_place: bool = True, kernels: str = "auto", counters: bool = True,
                 profile_prefix: str | None = None, rewrite_optimized: bool = True, ann_form: bool = True,
                 time_batch: int = DEFAULT_TIME_BATCH, time_batch_bytes: int | None = None,
                 time_pass_bytes: int = DEFAULT_TIME_PASS_BYTES, keep_weights: bool = True, weights_folder: str | None = None):
        if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
            from pmsm_compiler.loading import load_model

            model = load_model(model, static_inputs=False)
        info = read_snn_info(model)
        if info is None:
            raise InputError("not a compiled SNN model (no 'pmsm.snn' metadata): compile it with pmsm-compile first")
        self.info = info
        self.layers = info.layers
        #: the counting rules the model computes (its ``pmsm_spike_counters`` columns), or None for a
        #: model compiled before they existed, or with ``counters=False``: the step graphs then drop
        #: them (onnxruntime computes every graph output, bound or not; on the neurons' ONNX bodies
        #: the counters cost a third of a step, in the fused kernels nothing measurable)
        self.counters_output = info.counters_output if counters else None
        self.counter_names = list(info.counters) if self.counters_output else None
        self.input_name = info.inputs[0].name
        self.input_shape = info.inputs[0].shape
        self.fixed_batch = declared_batch(self.input_shape)
        self.output_names = info.outputs
        import onnxruntime as ort

        available = ort.get_available_providers()
        if providers:
            missing = [p for p in providers if p not in available]
            if missing:
                raise InputError(f"execution provider(s) not available: {', '.join(missing)}; "
                                 f"available: {', '.join(available)}")
        self.providers = list(providers or ["CPUExecutionProvider"])
        #: onnxruntime's per-node trace of every session, into JSON files starting with this prefix
        #: (``end_profiling``)
        self.profile_prefix = profile_prefix
        self.device = "cuda" if self.providers[0] == "CUDAExecutionProvider" else "cpu"
        self.kernels = self._kernel_library(kernels)
        # The weights once, as the arrays every session of this model is built from
        # (``pmsm_compiler.weights.split``): the prologue, the step variants and the T = 1 step in
        # the ANN's form are cut and rewritten from the weight-free skeleton, and none of them
        # copies or serializes the weights on its way to onnxruntime.
        model, self._weights = split(model, lazy=not keep_weights, keep=False)
        self._weights_folder = weights_folder
        if info.counters_output and not counters:
            model = without_output(model, info.counters_output)
        # T = 1 in exact mode: the one step in the ANN's own form (runtime/ann_form_step.py), from
        # the whole model, built on first use; any other model or provider: the usual first step
        self._full_model = model if (ann_form and info.mode == "exact" and self.device == "cpu") else None
        self._ann_form_tried = False
        self._ann_form_note: str | None = None
        prologue, step = split_static_prologue(model, info) if split_static else (None, model)
        self.prologue = (make_session(prologue, opt_level, self.providers, threads, shared_arena=True,
                                      qdq_fusion=False, profile_prefix=self._profile_name("prologue"),
                                      initializers=self._weights, weights_folder=self._weights_folder)
                         if prologue is not None else None)
        self.priority_order = priority_order
        self._fused_layers = 0
        self._unfused_notes: list[str] = []
        self._step_model, self._opt_level, self._threads = step, opt_level, threads
        # Each step variant's session is built on first use (``session_for``): a T = 1 run (the
        # verification's) needs only the first-and-last step, and every session holds its own copy
        # of the weights (and onnxruntime's prepacked one).
        self._variants = {}
        self._shapes: dict = {}  # (first, last) -> the variant's static_shapes before fusion
        initializers = {t.name for t in step.graph.initializer}
        self._step_inputs = {i.name: i for i in step.graph.input if i.name not in initializers}
        # On the CPU with the fused kernels at level "all", the step sessions run onnxruntime's own
        # optimized graph with the neurons' neighbours absorbed and no layout conversions around
        # them (runtime/optimized_step.py). Which membranes are stored in the blocked layout is
        # decided once, by the middle step, and every variant that reads or writes a state follows
        # (``blocked_states``), whichever is built first.
        self._rewrite = bool(rewrite_optimized and self.kernels
                             and opt_level in ("all", ort.GraphOptimizationLevel.ORT_ENABLE_ALL))
        self._blocked_states: dict | None = None
        self._step_rewrites = {"absorbed_ops": 0, "blocked_layers": 0}
        # T >= 2: ``time_batch`` steps per run of one session, layer by layer (runtime/time_batched.py),
        # where the step allows it and one step of the batch holds at most ``time_batch_bytes`` of its
        # largest neuron layer, as many steps a run as hold at most ``time_pass_bytes`` of it; planned
        # on first use, the session built when a run needs it
        if time_batch_bytes is None:
            time_batch_bytes = default_time_batch_bytes()
        if int(time_batch) < 1 or int(time_batch_bytes) < 1 or int(time_pass_bytes) < 1:
            raise InputError(f"time_batch, time_batch_bytes and time_pass_bytes must be >= 1, got {time_batch}, "
                             f"{time_batch_bytes}, {time_pass_bytes}")
        self.time_batch, self.time_batch_bytes = int(time_batch), int(time_batch_bytes)
        self.time_pass_bytes = int(time_pass_bytes)
        # (model, membrane dims, shapes, per-sample bytes to keep aligned), or () when refused
        self._time_batched_plan: tuple | None = None
        self._time_batched_note: str | None = None
        # the graph's own input type (not the metadata's): what onnxruntime will accept
        if self.prologue is not None:
            arg = next((a for a in self.prologue.get_inputs() if a.name == self.input_name), None)
            dtype = arg.type[7:-1] if arg else None
        else:
            value = self._step_inputs.get(self.input_name)
            elem = value.type.tensor_type.elem_type if value is not None and value.type.HasField("tensor_type") else 0
            dtype = onnx.TensorProto.DataType.Name(elem).lower() if elem else None
        self.input_dtype = DataInput(self.input_name, dtype=dtype).numpy_dtype()
        #: onnxruntime's name of the input's type (``NodeArg.type``), to compare with an ANN session's
        self.input_type = f"tensor({dtype})" if dtype else None
        self._prologue_outputs = [o.name for o in self.prologue.get_outputs()] if self.prologue else []
        self._states = info.states
        self._in_place, self._in_place_states = in_place, None
        # the step reads the network input itself when unsplit, or when a state-dependent node reads it
        self._step_reads_input = self.prologue is None or self.input_name in self._step_inputs
        expected = set(self._prologue_outputs) | ({self.input_name} if self._step_reads_input else set())
        expected |= {s.input for s in self._states}
        if info.time_input:
            expected.add(info.time_input)
        if set(self._step_inputs) != expected:
            raise InputError(f"compiled model inputs {sorted(self._step_inputs)} do not match its metadata")

    @property
    def step(self):
        """The onnxruntime session of a middle step (neither first nor last), built on first use."""
        return self.session_for(False, False)

    @property
    def fused_layers(self) -> int:
        """Neuron layers that run as fused kernels (in the step sessions built; the middle step's,
        built for the answer, when none is yet)."""
        self._some_step()
        return self._fused_layers

    @property
    def unfused_notes(self) -> list[str]:
        """Why a neuron layer kept its ONNX body (in the step sessions built; see ``fused_layers``)."""
        self._some_step()
        return self._unfused_notes

    def _some_step(self) -> None:
        # a T = 1 run builds only its one step: what it fused is the answer, without a middle step
        if not self._variants:
            self.step

    def output_dims(self, name: str) -> list | None:
        """The declared shape of the network output ``name`` (an int per static axis, the name of
        a symbolic one, None for an unknown one), from the model: asking builds no session."""
        for value in self._step_model.graph.output:
            if value.name == name and value.type.tensor_type.HasField("shape"):
                return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                        for d in value.type.tensor_type.shape.dim]
        return None

    @property
    def step_rewrites(self) -> dict:
        """What the rewrite of the optimized graph did to the middle step (built on first use):
        {"absorbed_ops": n, "blocked_layers": n}."""
        self.step
        return self._step_rewrites

    @property
    def blocked_states(self) -> dict:
        """{state input: channels} of the membranes stored in onnxruntime's blocked NCHWc layout:
        decided by the middle step's rewrite (``blocked_layout``, built on first use), which every
        variant that reads or writes a state follows; empty without the rewrite."""
        if not self._rewrite:
            return {}
        self.step
        return self._blocked_states

    @property
    def in_place_states(self) -> set[str]:
        """The states updated in place (``states_safe_in_place``), decided on first use: only a
        run of T >= 2 reads a state back. Decided on the unfused step: a fused neuron kernel reads
        each membrane element before it writes the next value to the same index, so fusing keeps a
        state safe to update in place."""
        if self._in_place_states is None:
            self._in_place_states = states_safe_in_place(self._step_model, self.info) if self._in_place else set()
        return self._in_place_states

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

    def _note_fusion(self, fused: int, notes: list[str]) -> None:
        self._fused_layers = max(self._fused_layers, fused)
        self._unfused_notes = sorted(set(self._unfused_notes) | set(notes))

    def _profile_name(self, label: str) -> str | None:
        return f"{self.profile_prefix}_{label}" if self.profile_prefix else None

    def end_profiling(self) -> dict[str, str]:
        """Stop the per-node traces (``profile_prefix``): {session label: JSON file}, the labels
        "prologue" and "step" (a middle step), "first", "last", "first+last" (``session_for``) and
        "time_batched" (a layer-by-layer pass) of the sessions built."""
        if not self.profile_prefix:
            return {}
        files = {}
        if self.prologue is not None:
            files["prologue"] = self.prologue.end_profiling()
        for key, session in self._variants.items():
            files[_variant_label(*key)] = session.end_profiling()
        return files

    def _middle_step_model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        """The middle-step model that its session runs: with the fused neuron kernels."""
        if self.kernels:
            from .fuse_neuron_kernels import fuse_model

            model, fused, notes = fuse_model(model)
            self._note_fusion(fused, notes)
        return model

    def _variant_model(self, first: bool, last: bool, extra_outputs: tuple) -> onnx.ModelProto:
        """The step variant (``step_variant``) with ``extra_outputs`` also outputs and the
        fused neuron kernels: every rewrite on one imported graph, exported once."""
        graph = variant_graph(self._step_model, self.info, first, last)
        if (first, last) not in self._shapes and self._rewrite:  # what the rewrite reads, from this import
            from .optimized_step import static_shapes

            self._shapes[(first, last)] = static_shapes(export_variant(graph, self._step_model, last))
        if extra_outputs:  # as onnx_utils.with_outputs adds them: float32 unless the graph knows better
            tensors = graph.tensors()
            present = {t.name for t in graph.outputs}
            for name in dict.fromkeys(extra_outputs):
                if name not in present:
                    if tensors[name].dtype is None:
                        tensors[name].dtype = np.float32
                    graph.outputs.append(tensors[name])
        fused = 0
        if self.kernels:
            from .fuse_neuron_kernels import fuse_neuron_kernels, fused_layers

            graph, notes = fuse_neuron_kernels(graph)
            fused = fused_layers(graph)
            self._note_fusion(fused, notes)
        from .fuse_neuron_kernels import with_kernel_domain

        return with_kernel_domain(export_variant(graph, self._step_model, last), fused)

    def _variant_shapes(self, first: bool, last: bool) -> dict:
        """``static_shapes`` of a step variant before kernel fusion, inferred on the step model as
        held, without its weights' data (``pmsm_compiler.weights.split``); once per variant."""
        from .optimized_step import static_shapes

        if (first, last) not in self._shapes:
            self._shapes[(first, last)] = static_shapes(export_variant(
                variant_graph(self._step_model, self.info, first, last), self._step_model, last))
        return self._shapes[(first, last)]

    def _make_step_session(self, model: onnx.ModelProto, key: tuple, required: dict | None, shapes: dict | None = None):
        """The session of step variant ``key`` from its model; with the rewrite,
        ``required``: the blocked membranes it must keep (None: it decides, see ``session_for``);
        ``shapes``: ``static_shapes`` to rewrite by (default: the variant's)."""
        profile_prefix = self._profile_name(_variant_label(*key))

        # qdq_fusion off: an SNN's DequantizeLinear (exact mode's output op of a Q/DQ neuron) stands
        # for k·s; integer-kernel fusion has nothing to gain there, and can fail on it (onnxruntime
        # 1.32 at opset 21: QuantizeLinear(int8) → DQ → Reshape)
        options = dict(threads=self._threads, shared_arena=True, qdq_fusion=False, priority_order=self.priority_order,
                       custom_ops_library=self.kernels, initializers=self._weights,
                       weights_folder=self._weights_folder)

        def make(m, opt_level, profile=True):
            return make_session(m, opt_level, self.providers, **options,
                                profile_prefix=profile_prefix if profile else None)

        if not self._rewrite:
            return make(model, self._opt_level)
        from pmsm_compiler.sessions import write_optimized_model

        from .optimized_step import optimized_step_session

        def optimize(m, path):
            write_optimized_model(m, path, "all", self.providers, **options)

        first, last, _ = key
        session, decisions, rewrites = optimized_step_session(
            model, self._variant_shapes(first, last) if shapes is None else shapes,
            [(s.input, s.output) for s in self.info.states], required,
            make, optimize, profiling=profile_prefix is not None)
        if key == _MIDDLE:
            self._blocked_states, self._step_rewrites = decisions, rewrites
        return session

    @property
    def ann_form(self) -> bool:
        """Whether a T = 1 run's one step runs in the ANN's form (``runtime.ann_form_step``: the
        whole model, neurons as the quantizer's ops, counted after onnxruntime's optimization);
        decided on first use. Why not, where it was tried and refused: ``ann_form_note``."""
        self.session_for(True, True)
        return _ANN_FORM in self._variants

    @property
    def ann_form_note(self) -> str | None:
        """Why the T = 1 step is not in the ANN's form although the model is in exact mode."""
        self.session_for(True, True)
        return self._ann_form_note

    def drop_sessions(self) -> None:
        """Free the step sessions built so far (each holds its own copy of the weights); they are
        built again on use (the T = 1 step in the ANN's form and the time-batched one too)."""
        self._ann_form_tried = False
        self._variants = {}

    @property
    def time_batched(self) -> bool:
        """Whether this model can run its steps layer by layer (``runtime.time_batched``): a run of
        T >= 2 steps does so when ``steps_per_run`` gives it 2 steps or more per session run;
        decided on first use. Why not: ``time_batched_note``."""
        return self._time_batch_layer_bytes() is not None

    @property
    def time_batched_note(self) -> str | None:
        """Why this model runs step by step whatever the batch (None where it can run time-batched)."""
        self._time_batch_layer_bytes()
        return self._time_batched_note

    def time_batch_report(self, batch: int, timesteps: int) -> dict:
        """How a run of ``timesteps`` steps on batches of ``batch`` samples runs its steps:
        {"steps_per_run": n (1: step by step), "reason": why step by step, or None}."""
        if timesteps < 2:
            return {"steps_per_run": 1, "reason": "one timestep"}
        batch = self.fixed_batch or batch  # a fixed-batch model runs batches of exactly its batch
        layer_bytes = self._time_batch_layer_bytes()
        if layer_bytes is None:
            return {"steps_per_run": 1, "reason": self._time_batched_note}
        aligned = self._time_batched_plan[3]
        per_run = self._steps_per_run(batch, timesteps, layer_bytes)
        if self._pass_steps(timesteps) < 2:
            return {"steps_per_run": 1, "reason": "two timesteps, the first on its own (temporal wrappers)"}
        off = misaligned(batch, aligned)
        if off is not None:
            return {"steps_per_run": 1, "reason": f"a sum onnxruntime rounds by address (ReduceMean, ...) over samples of "
                                                  f"{off} bytes: a pass of {batch} samples would move them to other "
                                                  f"alignments (a multiple of {ALIGNMENT_BYTES} bytes keeps them)"}
        if per_run < 2:
            step = batch * layer_bytes
            over = (f"over the {self.time_batch_bytes:,} of a layer-by-layer step" if step > self.time_batch_bytes else
                    f"over half the {self.time_pass_bytes:,} of a layer-by-layer pass")
            return {"steps_per_run": 1, "reason": f"one step of {batch} samples holds {step:,} bytes of its largest neuron "
                                                  f"layer, {over}"}
        return {"steps_per_run": per_run, "reason": None}

    def _steps_per_run(self, batch: int, timesteps: int, layer_bytes: int) -> int:
        """``time_batched.steps_per_run`` with this session's budgets (< 2: step by step)."""
        return steps_per_run(batch, self._pass_steps(timesteps), self.time_batch, self.time_batch_bytes, layer_bytes,
                             self._time_batched_plan[3], self.time_pass_bytes)

    def _pass_steps(self, timesteps: int) -> int:
        """The steps of a run that passes cover: all, or all but the first in a model with temporal
        wrappers (its first step runs as the step-by-step run's, ``_time_batched_steps``)."""
        return timesteps - 1 if self.info.wrappers else timesteps

    def _time_batch_layer_bytes(self) -> int | None:
        """The largest neuron layer's current per sample, in bytes, when the model can run
        time-batched (planned once: the rewritten model and its initial membranes' dims), else None."""
        from .time_batched import state_dims, static_current_inputs, time_batch_refusal, time_batched_model

        if self._time_batched_plan is None:
            self._time_batched_plan = ()
            if self.time_batch < 2:
                self._time_batched_note = f"time_batch = {self.time_batch}"
            elif not self.kernels:
                self._time_batched_note = "no fused neuron kernels (they run the steps of a layer)"
            else:
                try:
                    model = self._middle_step_model(self._step_model)
                    shapes = self._variant_shapes(False, False)
                    self._time_batched_note, aligned = time_batch_refusal(model, self.info, shapes)
                    if self._time_batched_note is None:
                        batched = time_batched_model(model, self.info, shapes)
                        self._time_batched_plan = (batched, state_dims(model, shapes, self.info), shapes, aligned,
                                                   static_current_inputs(batched))
                except Exception as exc:  # noqa: BLE001 - a speed-up: the steps run one by one instead
                    self._time_batched_plan = ()
                    self._time_batched_note = f"not planned: {type(exc).__name__}: {exc}"
        if not self._time_batched_plan:
            return None
        return np.dtype(np.float32).itemsize * max(int(np.prod(d)) for d in self._time_batched_plan[1].values())

    def _time_batched_session(self):
        """The session that runs several steps at once (built on first use; the plan allows it)."""
        if _TIME_BATCHED not in self._variants:
            model, _, shapes, *_ = self._time_batched_plan
            # with wrappers, step 1 runs as the first step variant, whose states follow the middle
            # step's layouts (``session_for``): the passes must read them in those
            required = self.blocked_states if self.info.wrappers and self._rewrite else None
            self._variants[_TIME_BATCHED] = self._make_step_session(model, _TIME_BATCHED, required,
                                                                    shapes if self._rewrite else None)
        return self._variants[_TIME_BATCHED]

    def _ann_form_session(self):
        """The T = 1 step in the ANN's form, or None (``ann_form_note`` says why)."""
        from pmsm_compiler.sessions import write_optimized_model

        from .ann_form_step import NotAnnForm, ann_form_step_session

        model = self._full_model
        self._ann_form_tried = True  # built once (again after ``drop_sessions``)
        options = dict(threads=self._threads, shared_arena=True, qdq_fusion=False, priority_order=self.priority_order,
                       initializers=self._weights, weights_folder=self._weights_folder)
        profile_prefix = self._profile_name(_variant_label(True, True, ()))

        def make(path):
            return make_session(path, "disable", self.providers, **options, profile_prefix=profile_prefix,
                                custom_ops_library=self.kernels)

        def optimize(m, path):
            write_optimized_model(m, path, self._opt_level, self.providers, **options)

        try:
            session, fused = ann_form_step_session(model, self.info, make, optimize, kernels=bool(self.kernels))
        except NotAnnForm as exc:
            self._ann_form_note = str(exc)
            return None
        self._note_fusion(fused, [])
        return session

    def session_for(self, first: bool, last: bool, extra_outputs: tuple = ()):
        """The onnxruntime session for a step at this position in time (created on first use);
        ``extra_outputs``: intermediate tensors it also outputs (e.g. the layers' spikes). The one
        step of T = 1 (first and last, no extra output) of an exact-mode model runs in the ANN's
        form where it can (``ann_form``): it then reads the network input, not the prologue's."""
        key = (first, last, tuple(extra_outputs))
        if key == (True, True, ()) and self._full_model is not None and not self._ann_form_tried:
            session = self._ann_form_session()
            if session is not None:
                self._variants[_ANN_FORM] = session
                return session
        if key == (True, True, ()) and _ANN_FORM in self._variants:
            return self._variants[_ANN_FORM]
        if key not in self._variants:
            plain = not (first or last or extra_outputs)
            # The layout of the membranes is the middle step's (built first if need be): states flow
            # from one step's outputs into the next one's inputs. The one step of a T = 1 run reads
            # and writes no state (``step_variant``), so its neurons' layouts are its own.
            required = None if plain or (first and last) or not self._rewrite else self.blocked_states
            model = self._middle_step_model(self._step_model) if plain else self._variant_model(first, last, extra_outputs)
            self._variants[key] = self._make_step_session(model, key, required)
        return self._variants[key]

    def run_first_step(self, x: np.ndarray, extra_outputs=()) -> dict:
        """The one step of a T = 1 run (``session_for(first=True, last=True)``, as ``run_batch(x, 1)``
        runs it: static prologue, fused kernels and all) on one batch of the model's batch size:
        {name: array} for the network outputs and ``extra_outputs``. What the verification compares
        with the ANN."""
        self.check_input(x)
        feeds = {}
        session = self.session_for(True, True, tuple(extra_outputs))
        inputs = {i.name for i in session.get_inputs()}
        if self.prologue is not None and not (_ANN_FORM in self._variants and session is self._variants[_ANN_FORM]):
            names = [o.name for o in self.prologue.get_outputs()]
            feeds.update(zip(names, self.prologue.run(None, {self.input_name: x})))
        if self.input_name in inputs:
            feeds[self.input_name] = x
        if self.info.time_input in inputs:
            feeds[self.info.time_input] = np.ones([1], np.float32)
        names = [o.name for o in session.get_outputs()]
        return dict(zip(names, session.run(None, {k: v for k, v in feeds.items() if k in inputs})))

    def _middle_binding(self, session, static_values: dict, states: dict, like: list):
        """(binding, arrays, keep) for the middle steps: the static inputs, every state bound in place
        (as its own output), and the per-step outputs (network outputs, spike counts, counters:
        shaped as ``like``, the previous step's) written into ``arrays``, which the loop reads after
        each run. ``keep``: the OrtValues over those arrays, to hold while the binding is used."""
        import onnxruntime as ort

        b = session.io_binding()
        for name, value in static_values.items():
            b.bind_ortvalue_input(name, value)
        for s in self._states:
            b.bind_ortvalue_input(s.input, states[s.input])
            b.bind_ortvalue_output(s.output, states[s.input])
        keep = []
        names = list(self.output_names) + [self.info.spike_counts_output]
        if self.counters_output is not None:
            names.append(self.counters_output)
        arrays = [np.empty_like(a) for a in like]
        for name, array in zip(names, arrays):
            keep.append(ort.OrtValue.ortvalue_from_numpy(array))
            b.bind_ortvalue_output(name, keep[-1])
        return b, arrays, keep

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
        one_step = timesteps == 1 and self.session_for(True, True) is self._variants.get(_ANN_FORM)
        if self.prologue is not None and not one_step:  # the ANN-form step reads the network input
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
        k = len(self.output_names)
        layer_bytes = self._time_batch_layer_bytes() if timesteps >= 2 else None
        per_run = self._steps_per_run(n, timesteps, layer_bytes) if layer_bytes else 1
        time_batched = self._time_batched_session() if per_run >= 2 else None
        steps = (self._time_batched_steps(time_batched, static_values, n, timesteps, per_run)
                 if time_batched is not None else self._stepwise_steps(static_values, timesteps))
        for t, step_outputs in enumerate(steps, start=1):
            step_out = step_outputs[0]
            spikes[t - 1] = step_outputs[k]
            if counted:
                step_counters = step_outputs[k + 1]
                counters[t - 1] = step_counters[:real].sum(axis=0)
                if by_sample is not None:
                    by_sample[t - 1] = step_counters
            out_sum = step_out.astype(np.float64) if out_sum is None else out_sum + step_out
            if keep_outputs:
                per_step.append(step_out.copy())
            preds[t - 1] = (out_sum.reshape(n, -1)).argmax(1) if step_out.ndim >= 2 else 0
        mean = (out_sum / timesteps).astype(np.float32)
        return BatchResult(mean, preds, spikes, np.stack(per_step) if keep_outputs else None,
                           counters if counted else None, by_sample if counted else None)

    def _stepwise_steps(self, static_values: dict, timesteps: int):
        """Run the steps one at a time; yield each step's outputs (network outputs, spike counts,
        counters when the model has them), valid until the next step runs."""
        counted = self.counters_output is not None
        k = len(self.output_names)
        states = {}  # state input name -> the OrtValue the next step reads
        spare = {}  # ping-pong states: state input name -> the buffer the next step writes
        time_name = self.info.time_input
        # Middle steps when every state is updated in place (and no time input changes): one
        # IOBinding, bound once, reused step after step; its per-step outputs land in numpy arrays of
        # this loop (``reused``). At batch 1 rebinding every buffer and wrapping every output each
        # step cost a sizeable part of a step.
        reuse = self.device == "cpu" and not time_name and len(self.in_place_states) == len(self._states)
        middle, reused, keep = None, None, None
        step_outputs = None  # the previous step's outputs; step 1 (never a reused middle step) sets them
        for t in range(1, timesteps + 1):
            first, last = t == 1, t == timesteps
            session = self.session_for(first, last)
            if reuse and not first and not last:
                if middle is None:
                    middle, reused, keep = self._middle_binding(session, static_values, states, step_outputs)
                session.run_with_iobinding(middle)
                step_outputs = reused
            else:
                b = session.io_binding()
                for name, value in static_values.items():
                    b.bind_ortvalue_input(name, value)
                if not first:
                    for s in self._states:
                        b.bind_ortvalue_input(s.input, states[s.input])
                if time_name:
                    b.bind_cpu_input(time_name, np.array([t], np.float32))
                for name in self.output_names:
                    b.bind_output(name, "cpu")
                b.bind_output(self.info.spike_counts_output, "cpu")
                if counted:
                    b.bind_output(self.counters_output, "cpu")
                if not last:
                    for s in self._states:
                        if not first and s.input in self.in_place_states:
                            target = states[s.input]  # one buffer, read then rewritten in place
                        else:
                            target = spare.get(s.input)
                        if target is not None:
                            b.bind_ortvalue_output(s.output, target)
                        else:  # first step: onnxruntime allocates the full-size state
                            b.bind_output(s.output, self.device)
                session.run_with_iobinding(b)
                outs = b.get_outputs()
                first_state = k + 1 + counted
                step_outputs = [v.numpy() for v in outs[:first_state]]
                if not last:
                    new_states = {s.input: v for s, v in zip(self._states, outs[first_state:])}
                    if not first:
                        # Ping-pong: the buffer this step read (full-size from t = 2 on) receives the
                        # output of the step after.
                        spare = {name: states[name] for name in states if name not in self.in_place_states}
                    states = new_states
            yield step_outputs

    def _time_batched_steps(self, session, static_values: dict, n: int, timesteps: int, per_run: int):
        """Run the steps layer by layer, ``per_run`` per session run, the states carried from run
        to run in one buffer each (updated in place); in a model with temporal wrappers step 1 runs
        as the step-by-step run's first step, the passes from step 2 on. Yield each step's outputs
        as ``_stepwise_steps`` does."""
        from .time_batched import PASS_INPUT, over_time, pass_value, split_rows, time_rows

        names = list(self.output_names) + [self.info.spike_counts_output]
        if self.counters_output is not None:
            names.append(self.counters_output)
        start = 0
        if self.info.wrappers:
            # Step 1 as the step-by-step run's first step: its wrappers read their inputs directly,
            # as the ANN's graph does, which onnxruntime may fuse differently (a MatMul with its
            # transposed operand) from the running averages a pass computes, in the last bit.
            first = self.session_for(True, False)
            b = first.io_binding()
            for name, value in static_values.items():
                b.bind_ortvalue_input(name, value)
            if self.info.time_input:
                b.bind_cpu_input(self.info.time_input, np.array([1], np.float32))
            for name in names:
                b.bind_output(name, "cpu")
            for s in self._states:
                b.bind_output(s.output, self.device)
            first.run_with_iobinding(b)
            outs = b.get_outputs()
            yield [v.numpy() for v in outs[:len(names)]]
            states = {s.input: v for s, v in zip(self._states, outs[len(names):])}
            start = 1
        else:
            # every state is a neuron's membrane: the first pass starts them from their initial values
            # (``pass_value``'s fresh), so their buffers need no filling
            states = {}
            for s in self._states:
                dims = self._time_batched_plan[1][s.input]
                states[s.input] = self._ortvalue(np.empty([n, *dims], np.float32))
        # a static input the kernels read as a static current goes in as it is, the others as T copies
        broadcast = self._time_batched_plan[4]
        static = {name: value.numpy() for name, value in static_values.items() if name not in broadcast}
        tiled = {}  # steps -> the static inputs as that many steps' rows
        for begin in range(start, timesteps, per_run):
            steps = min(per_run, timesteps - begin)
            if steps not in tiled:
                tiled[steps] = {name: self._ortvalue(over_time(a, steps)) for name, a in static.items()}
            b = session.io_binding()
            for name, value in tiled[steps].items():
                b.bind_ortvalue_input(name, value)
            for name in broadcast:
                b.bind_ortvalue_input(name, static_values[name])
            b.bind_cpu_input(PASS_INPUT, pass_value(steps, fresh=begin == 0))
            if self.info.time_input:
                b.bind_cpu_input(self.info.time_input, time_rows(begin + 1, steps, n))
            for name in names:  # first: get_outputs() lists the outputs in the order they were bound
                b.bind_output(name, "cpu")
            for s in self._states:
                b.bind_ortvalue_input(s.input, states[s.input])
                b.bind_ortvalue_output(s.output, states[s.input])
            session.run_with_iobinding(b)
            rows = [split_rows(v.numpy(), steps) for v in b.get_outputs()[:len(names)]]
            for t in range(steps):
                yield [r[t] for r in rows]


_MIDDLE = (False, False, ())
_ANN_FORM = (True, True, "ann_form")
_TIME_BATCHED = (False, False, "time_batched")


def _variant_label(first: bool, last: bool, extra_outputs: tuple) -> str:
    label = {(False, False): "step", (True, False): "first", (False, True): "last", (True, True): "first+last"}
    if extra_outputs == "ann_form":
        return "first+last"
    if extra_outputs == "time_batched":
        return "time_batched"
    return label[(first, last)] + (f"+{len(extra_outputs)}outputs" if extra_outputs else "")
