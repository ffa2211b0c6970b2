"""Load → compile → verify: the one chain that ``pmsm-compile``, ``pmsm-demo`` and ``bench/`` run.

    result = compile_and_verify("model.onnx", mode="folded")      # or a loaded ModelProto
    result.passed, result.verification["level_agreement"]          # the T = 1 verification report
    save_model_atomic(result.model, "model.snn.onnx")              # the caller decides what to write
    compile_and_verify("model.onnx", output="model.snn.onnx")      # or: written while it verifies,
                                                                   # in place only if it passes

Steps, each refusing with a one-line error (``InputError`` / ``UnsupportedModelError``, exit 2):

1. ``load_ann``: the untrusted-model loader (``loading.load_model``), then what the compiler
   needs of its input: not already a compiled SNN, one data input, static non-batch dimensions.
2. ``compiler.compile_model`` in the chosen mode.
3. The verification inputs (``verification_inputs``): calibration data (normalized like the
   model's training data), or seeded random inputs of the input's element type. They are made
   before any onnxruntime run, so that a refused input size costs no run.
4. ``verify.check_runs``: onnxruntime runs the ANN at all (the checker accepts some models the
   engine refuses), on one sample or the batch the model declares; on the verification's own ANN
   session when it will run the same model. With an output and ``keep_weights=False``, the SNN's
   session (``verify.snn_runtime``) is built meanwhile in a thread of its own, from the weights
   the background save has written.
5. ``verify.verify`` at T = 1 under ``VerificationPolicy``. A failed verification does not raise
   here: the report says why, and ``raise_if_failed`` (or the caller) turns it into
   ``VerificationError`` (exit 1).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field

import numpy as np
import onnx

from pmsm_compiler.errors import InputError, VerificationError
from pmsm_compiler.snn_format import SNNInfo

#: the verification's defaults, one definition for the CLI's flags and the API
DEFAULT_SAMPLES = 64
DEFAULT_SEED = 0
SKIPPED = {"passed": None, "skipped": True}


@dataclass
class PipelineResult:
    """What :func:`compile_and_verify` returns.

    ``ann``: the loaded source model; ``compiled``: the ``compiler.CompiledModel`` (``.model`` the
    SNN's ONNX, ``.info`` its record); ``verification``: the T = 1 report of ``verify.verify``
    (``{"passed": None, "skipped": True}`` without a check); ``seconds``: wall time of the chain,
    ``phase_seconds`` of its steps.
    """

    ann: onnx.ModelProto
    compiled: object
    mode: str
    verification: dict = field(default_factory=lambda: dict(SKIPPED))
    seconds: float = 0.0
    #: wall seconds of each step: "load" (reading, checks, shape inference), "compile" (the passes,
    #: export and check of the SNN), "verify" (the check that onnxruntime runs the ANN and the T = 1
    #: verification, sessions included), with an ``output``: "save" (from the verification's end to
    #: the file in place; it is written while the verification runs)
    phase_seconds: dict = field(default_factory=dict)
    #: with an ``output``: whether the SNN was written there (not after a failed verification)
    saved: bool = False
    #: whether its weights went to an external data file (``loading.save_model_atomic``)
    external_data: bool = False

    @property
    def model(self) -> onnx.ModelProto:
        return self.compiled.model

    @property
    def info(self) -> SNNInfo:
        return self.compiled.info

    @property
    def checked(self) -> bool:
        return not self.verification.get("skipped", False)

    @property
    def passed(self) -> bool:
        """False only for a verification that ran and failed (a skipped one does not fail)."""
        return self.verification.get("passed") is not False

    def raise_if_failed(self, what: str = "the model", suffix: str = "") -> None:
        """VerificationError (exit code 1) naming the first failures, if the verification failed."""
        if not self.passed:
            raise VerificationError(f"{what}: verification failed: "
                                    + "; ".join(self.verification["failures"][:3]) + suffix)


def load_ann(path: str | os.PathLike[str], *, max_bytes: int | None = None,
             input_shapes: dict | None = None) -> onnx.ModelProto:
    """Load an untrusted ANN for compilation (``loading.load_model``) and refuse, in one line, a
    compiled SNN, a model with more than one data input and dynamic non-batch dimensions."""
    return _load_ann(path, max_bytes=max_bytes, input_shapes=input_shapes)[0]


def _load_ann(path, *, max_bytes, input_shapes):
    """``load_ann``, and where the model's weights lie in its file (``loading.load_model_and_weight_files``)."""
    from pmsm_compiler.snn_format import read_snn_info
    from pmsm_compiler.loading import check_single_input, check_static_shapes, load_model_and_weight_files

    ann, located = load_model_and_weight_files(path, max_bytes=max_bytes, static_inputs=False,
                                               input_shapes=input_shapes)
    if read_snn_info(ann) is not None:
        raise InputError(f"{os.fspath(path)} is already a compiled SNN ('pmsm.snn' metadata); give the source ANN")
    check_single_input(ann)
    check_static_shapes(ann)
    return ann, located


def check_sampling(samples: int, seed: int) -> None:
    """InputError (one line, named by the CLI's flag) for a sample count below 1 or a negative seed."""
    if samples < 1:
        raise InputError(f"--samples must be >= 1, got {samples}")
    if seed < 0:
        raise InputError(f"--seed must be >= 0, got {seed}")


def verification_inputs(info: SNNInfo, *, data: str | None = None, samples: int = DEFAULT_SAMPLES,
                        seed: int = DEFAULT_SEED, normalization: str = "auto") -> tuple[np.ndarray, str]:
    """(inputs, label) for the verification of a compiled model with record ``info``: the first
    ``samples`` of data set ``data`` (a path, or "bundled"; uint8 images normalized by
    ``normalization``), or, without ``data``, ``samples`` seeded random inputs."""
    from pmsm_compiler.verify import random_inputs

    check_sampling(samples, seed)
    if data:
        from pmsm_compiler.data import load_dataset
        from pmsm_compiler.data.prepare import model_inputs, resolve_normalization

        ds = load_dataset(None if data == "bundled" else data)
        mean, std = resolve_normalization(normalization, info)
        spec = info.inputs[0]
        x, _ = model_inputs(ds, spec.shape, mean, std, limit=samples, input_dtype=spec.numpy_dtype(),
                            input_name=spec.name)
        return x, f"{ds.name} ({len(x)} samples)"
    x = random_inputs(info, samples, seed)
    kind = "normal" if x.dtype.kind == "f" else f"uniform {x.dtype}"
    return x, f"random {kind}, seed {seed} ({samples} samples)"


def compile_and_verify(model: str | os.PathLike[str] | onnx.ModelProto, mode: str = "folded", *,
                       check: bool = True, data: str | None = None, samples: int = DEFAULT_SAMPLES,
                       seed: int = DEFAULT_SEED, normalization: str = "auto", opt_level: str = "all",
                       policy=None, max_bytes: int | None = None, input_shapes: dict | None = None,
                       what: str | None = None, providers=None, threads: int = 0,
                       output: str | os.PathLike[str] | None = None,
                       external_data: bool | None = None, keep_weights: bool = True) -> PipelineResult:
    """Load (a path; a ModelProto is taken as loaded), compile in ``mode`` ("folded" or "exact")
    and, with ``check``, verify at T = 1 on ``verification_inputs(data, samples, seed,
    normalization)`` under ``policy`` (a ``verify.VerificationPolicy``; default: the policy's
    defaults) at onnxruntime level ``opt_level`` with execution ``providers`` (default: CPU) and
    ``threads`` intra-op threads (0: onnxruntime's default). Returns a :class:`PipelineResult`; a failed
    verification is in its report (``result.passed``), not raised.

    ``output``: also write the SNN there (``loading.save_model_atomic``, with ``external_data``),
    into a temporary file while the verification runs, put in place once it has passed (or was
    skipped): a failed verification or an exception leaves ``output`` as it was.

    ``keep_weights``: False lets the chain drop the models' weights where it can read them again
    from a file (a model read from a path, no Q/DQ nodes; ``pmsm-compile`` passes False):

    - the loaded model's right after the compile, where they lie as loaded in its file and its
      external data files (not after an opset upgrade): the verification's sessions of it map
      them from there (``weights.WeightFiles``), and those files must not change meanwhile
      (``InputError`` if one did);
    - the SNN's once they are written to ``output``'s temporary file: its sessions map them there;
    - the reference the compiler made of the loaded model (``compiled.reference``: computed
      constants evaluated), or the loaded model not found in its file, once the verification's
      sessions of it are built (``verify``'s ``release_ann``).

    ``result.ann``, ``result.compiled.reference`` and ``result.model`` are then structures, each
    large initializer an external-data reference: to the model file's bytes, to the output's
    where it was saved, or to no data (``weights.IN_MEMORY``)."""
    from pmsm_compiler import weights
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.sessions import onnxruntime_errors
    from pmsm_compiler.verify import VerificationPolicy, has_qdq, verification_snn_threads, verify

    start = time.perf_counter()
    check_sampling(samples, seed)  # before the load: bad arguments cost nothing
    ann_file = None  # where the loaded model's weights lie in its file
    if isinstance(model, onnx.ModelProto):
        ann, what = model, what or "the model"
    else:
        ann, ann_file = _load_ann(model, max_bytes=max_bytes, input_shapes=input_shapes)
        what = what or os.fspath(model)
    loaded = time.perf_counter()
    compiled = compile_model(ann, mode=mode)
    compiled_at = time.perf_counter()
    saving = _BackgroundSave(compiled.model, output, external_data) if output is not None else None
    # Only a model this chain loaded (the caller holds no reference to it), without Q/DQ nodes
    # (their verification also runs the deployed ANN and onnx.reference on the weights)
    release = not keep_weights and ann is not model and not has_qdq(ann)
    ann_folder = None
    if release and ann_file is not None:
        # the loaded model's weights from its file from here on: onnxruntime maps them there, and
        # the ModelProto that held them goes before any session is built
        structure = ann_file.references(ann)
        if compiled.reference is ann:
            compiled.reference = structure
        ann, ann_folder = structure, ann_file.folder
        del structure
    else:
        ann_file = None

    def structure_only() -> tuple[onnx.ModelProto, onnx.ModelProto]:
        # every reference to the reference (and so to the loaded model, where it is the reference)
        # is dropped here and in ``verify``: protobuf frees each whole
        nonlocal ann
        if compiled.reference is ann:
            ann = compiled.reference = _structure_of(ann)
        else:
            compiled.reference = _structure_of(compiled.reference)
        return ann, compiled.reference

    # The SNN's weights from the file the background save writes them to: onnxruntime maps them
    # there, and the ModelProto that held them goes; its session is built in a thread of its own
    # while this one builds the ANN's (onnxruntime builds sessions without the GIL)
    snn_pending = (_in_background(_snn_from_file, compiled, saving, opt_level, providers,
                                  verification_snn_threads(compiled.info, samples, threads, providers))
                   if release and check and saving is not None else None)
    snn_file = None
    try:
        x, label, sessions = _prepare_verification(ann, compiled, mode=mode, check=check, data=data, samples=samples,
                                                   seed=seed, normalization=normalization, opt_level=opt_level,
                                                   providers=providers, threads=threads, what=what,
                                                   weights_folder=ann_folder)
        if release and compiled.reference is not ann:
            # the loaded model itself, where the verification compares with the reference: read
            # only by the check that onnxruntime runs it, done (exact mode's plain comparison, the
            # peak of a legacy export's verification, no longer holds it)
            ann = _structure_of(ann)
        if not check:
            if release:  # nothing reads the weights after the compile and the check that it runs
                structure_only()
            verification = dict(SKIPPED)
        else:
            # onnxruntime refusing a model the compiler wrote is a bug, but one line of it (exit 2),
            # not a traceback (fuzzer seed 61973 ended so before its cause was fixed). The sessions
            # are handed over with no local left holding them (verify frees the plain one once
            # used), as plain keyword arguments: a call with ** keeps its positional arguments (the
            # loaded model) and its keyword dict (the sessions) for as long as it runs.
            with onnxruntime_errors(f"the T = 1 verification of {what}"):
                verification = verify(ann, compiled, x, opt_level=opt_level, mode=mode,
                                      policy=policy or VerificationPolicy(), data_label=label, providers=providers,
                                      threads=threads, ann_session=sessions.pop("ann_session", None),
                                      plain_session=sessions.pop("plain_session", None),
                                      release_ann=structure_only if release else None,
                                      ann_weights_folder=ann_folder, runtime=snn_pending)
                if snn_pending is not None:  # its result, the SNN's runtime, goes with it
                    snn_file, snn_pending = saving.weights_file(), None
        changed = ann_file.changed() if ann_file is not None else None
        if changed:
            raise InputError(f"{what}: {changed} changed on disk while it was compiled and verified "
                             f"(the verification read the weights from it): compile it again")
        end = time.perf_counter()
        phases = {"load": round(loaded - start, 3), "compile": round(compiled_at - loaded, 3),
                  "verify": round(end - compiled_at, 3)}
        result = PipelineResult(ann, compiled, mode, verification, end - start, phases)
    except BaseException:
        if saving is not None:  # its writer waits for this verdict
            saving.finish(False)
        if snn_pending is not None:  # its failure, if any, is this one's consequence
            futures.wait([snn_pending])
        raise
    if saving is not None:
        result.saved, result.external_data = saving.finish(result.passed)
        phases["save"] = round(time.perf_counter() - end, 3)
        if snn_file is not None:  # the SNN's structure refers to its weights in the output, or to none
            placed = saving.placed_file() if result.saved else None
            compiled.model = (placed.references(compiled.model) if placed is not None else
                              weights.file_references(compiled.model, dict.fromkeys(snn_file.places,
                                                                                    (weights.IN_MEMORY, 0))))
    return result


def _prepare_verification(ann, compiled, *, mode, check, data, samples, seed, normalization, opt_level,
                          providers, threads, what, weights_folder=None) -> tuple:
    """Steps 3 and 4 (see the module docstring): (inputs, their label, {the verification's
    sessions of the ANN, by ``verify``'s argument name}); inputs and label None without ``check``.
    ``weights_folder``: where the files the ANN's external-data references name are."""
    from pmsm_compiler.verify import random_inputs

    info = compiled.info
    x = label = None
    if check:  # the inputs first: their refusals (size, type) are cheaper than a run
        x, label = verification_inputs(info, data=data, samples=samples, seed=seed, normalization=normalization)
    batch = info.inputs[0].shape[0]  # one sample, or the batch the model declares
    probe = random_inputs(info, batch if isinstance(batch, int) and batch > 0 else 1, seed)
    sessions = {}
    _check_ann(ann, compiled, probe, sessions, mode=mode, check=check, opt_level=opt_level, providers=providers,
               threads=threads, what=what, weights_folder=weights_folder)
    return x, label, sessions


def _snn_from_file(compiled, saving, opt_level, providers, threads):
    """The verification's ``verify.snn_runtime`` of the SNN, warm, once the background save has
    written the SNN's weights: ``compiled.model`` is then the structure that refers to them there
    (``saving.weights_file()``); None where the writer failed first (the verification then reads
    the weights from the ModelProto)."""
    from pmsm_compiler.verify import snn_runtime

    snn_file = saving.weights_file()
    if snn_file is None:
        return None
    compiled.model = snn_file.references(compiled.model)
    return snn_runtime(compiled, opt_level, providers, threads, snn_file.folder, warm=True)


def _structure_of(model: onnx.ModelProto) -> onnx.ModelProto:
    """``model`` without the data of its large initializers (each an external-data reference to
    ``weights.IN_MEMORY``): nodes, functions, metadata and small initializers copied; ``model``
    itself where it holds none (a structure already: its weights referred to in their files)."""
    from pmsm_compiler import weights

    if not any(weights.strippable(t) for t in model.graph.initializer):
        return model
    structure, _ = weights.split(model, lazy=True, keep=False)  # the lazy mapping, dropped, reads nothing
    return structure


class _BackgroundSave:
    """The SNN written to its output in a thread while the verification runs: into a temporary
    file, put in place once ``finish(True)`` (``files.write_atomic``'s ``approve``), removed on
    ``finish(False)``. Both only read the model (the verification's sessions take a copy of its
    skeleton, ``weights.split``), and once the weights are in the file (``weights_file``) the
    writer holds no reference to it: the verification may map them from there and drop it. A
    large model's first write into the page cache is slow (VGG-16's 128 MB: 0.2–0.4 s against
    0.1 s written again on the development VM); it overlaps the verification's first steps instead
    of preceding them."""

    def __init__(self, model, path, external_data):
        self._verdict = threading.Event()
        self._passed = False
        self._written = threading.Event()
        self._file = self._final = None
        # the model travels in a list the writer empties: no argument tuple keeps it once it is written
        self._future = _in_background(self._save, [model], path, external_data)

    def _save(self, held: list, path, external_data) -> bool:
        from pmsm_compiler.loading import save_model_atomic

        try:
            return save_model_atomic(held.pop(), path, external_data, self._approve, self._on_written)
        finally:
            self._written.set()  # also when it failed before the weights were written

    def _on_written(self, file: str, offsets: dict, final: str) -> None:
        from pmsm_compiler.weights import WeightFiles

        self._file, self._final = WeightFiles.of_file(file, offsets), final
        self._written.set()

    def weights_file(self):
        """The ``weights.WeightFiles`` of the temporary file that holds the model's large
        initializers once they are written (waits for it), or None where the writer failed
        first; the file lives until ``finish``, and on as the output where it is put in place."""
        self._written.wait()
        return self._file

    def placed_file(self):
        """``weights_file`` under the name it has once ``finish`` put it in place."""
        return self._file.moved_to(self._final) if self._file is not None else None

    def _approve(self) -> None:
        from pmsm_compiler.files import WriteCancelled

        self._verdict.wait()
        if not self._passed:
            raise WriteCancelled

    def finish(self, passed: bool) -> tuple[bool, bool]:
        """(written, external data): put the file in place (``passed``) or drop it; waits for the
        writer and raises its error (a full disk, ...) if the file was to be written."""
        from pmsm_compiler.files import WriteCancelled

        self._passed = passed
        self._verdict.set()
        try:
            return True, self._future.result()
        except WriteCancelled:
            return False, False
        except Exception:
            if passed:
                raise
            return False, False


def _in_background(fn, *args) -> futures.Future:
    """``fn(*args)`` run in a thread of its own, as a future."""
    executor = futures.ThreadPoolExecutor(1, thread_name_prefix="pmsm")
    try:
        return executor.submit(fn, *args)
    finally:
        executor.shutdown(wait=False)  # the thread ends with the call


def _check_ann(ann, compiled, probe, sessions: dict, *, mode, check, opt_level, providers, threads, what,
               weights_folder=None) -> None:
    """Run the ANN once on ``probe`` (an ANN onnxruntime cannot run fails here, with its message);
    where one of the verification's own ANN sessions can run it, that session goes into
    ``sessions`` for ``verify``."""
    from pmsm_compiler.sessions import onnxruntime_errors
    from pmsm_compiler.verify import check_runs, has_qdq, reference_session, verification_threads

    if check and compiled.reference is ann and not has_qdq(ann):
        # One of the verification's own ANN sessions runs the check: one onnxruntime copy of the
        # weights fewer to build. Exact mode: the plain ANN (the outputs as run), built first and
        # kept; folded: the ANN with its quantizer outputs exposed. With Q/DQ nodes the check runs
        # the model as deployed (Q/DQ fused), which the verification's sessions do not.
        exposed = mode != "exact"
        with onnxruntime_errors(what):
            session = reference_session(compiled, opt_level, providers, verification_threads(threads, providers)[0],
                                        exposed=exposed, weights_folder=weights_folder)
            session.run(None, {session.get_inputs()[0].name: probe})
        sessions["ann_session" if exposed else "plain_session"] = session
        del session
    else:
        check_runs(ann, probe, opt_level, what=what, providers=providers, threads=threads,
                   weights_folder=weights_folder)
