"""Shared by bench/compatibility.py and bench/ptq_resnet20.py (a helper module, not a script):
CIFAR-10 loading, onnxruntime's static quantizer, and the end-to-end measurement of a quantized
ONNX model: compile in each mode, the T = 1 verification on the test images, the SNN run.

``measure`` reports, per compile mode:
- ``verification``: what ``pmsm-compile`` checks, on the given images (level agreement over every
  neuron's levels, T = 1 prediction agreement, max |output difference|, pass/fail) and, as
  information, the agreement of the SNN's T = 1 predictions with the *deployed* ANN (onnxruntime
  at its default level, Q/DQ fused into integer kernels);
- ``run``: the ``pmsm-run`` report on the labelled images: SNN accuracy at every t ≤ T, the
  quantized ANN's accuracy (Q/DQ as float simulation, the semantics the verification checks),
  the T = 1 prediction agreement with it, spikes per image per step;
- the deployed ANN's own accuracy, and the float model's when given.
"""

from __future__ import annotations

import os
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10")


def cifar10(data_dir):
    """(train, test, source): the CIFAR-10 .npz pair of ``data_dir``, or, when it holds no
    test.npz, the bundled 1,000 test images as both (a smoke run, not a measurement)."""
    from pmsm_compiler.data import load_bundled_sample, load_npz

    test_path = os.path.join(data_dir, "test.npz") if data_dir else ""
    if test_path and os.path.exists(test_path):
        return load_npz(os.path.join(data_dir, "train.npz")), load_npz(test_path), os.path.abspath(data_dir)
    bundled = load_bundled_sample()
    return bundled, bundled, "bundled 1,000 test images (train = test: a smoke run, not a measurement)"


def images(dataset, mean, std):
    """float32 NCHW, normalized."""
    from pmsm_compiler.data import normalize

    return normalize(dataset.x, mean, std)


def accuracy(session, x, y, batch_size=250):
    """Top-1 accuracy of an onnxruntime session (a fixed batch is fed as declared)."""
    from pmsm_compiler.sessions import run_declared_batches

    correct = 0
    for i in range(0, len(x), batch_size):
        out = run_declared_batches(session, x[i:i + batch_size])
        correct += int((out.reshape(len(out), -1).argmax(1) == y[i:i + batch_size]).sum())
    return correct / len(x)


def ort_quantize(float_path, out_path, calibration, *, per_channel=True, activations="uint8", weights="int8",
                 symmetric=False, batch_size=64):
    """onnxruntime.quantization.quantize_static, QDQ format, MinMax calibration on ``calibration``
    (float32 NCHW, normalized training images)."""
    from onnxruntime import quantization as q

    types = {"uint8": q.QuantType.QUInt8, "int8": q.QuantType.QInt8, "uint16": q.QuantType.QUInt16,
             "int16": q.QuantType.QInt16}
    import onnx

    input_name = onnx.load(float_path, load_external_data=False).graph.input[0].name

    class Reader(q.CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{input_name: calibration[i:i + batch_size]}
                                 for i in range(0, len(calibration), batch_size)])

        def get_next(self):
            return next(self.batches, None)

    q.quantize_static(float_path, out_path, Reader(), quant_format=q.QuantFormat.QDQ, per_channel=per_channel,
                      activation_type=types[activations], weight_type=types[weights],
                      extra_options={"ActivationSymmetric": symmetric})
    return out_path


def measure(path, test, mean, std, *, modes=("exact", "folded"), max_t=4, batch_size=250, float_path=None,
            verify_samples=None, log=print):
    """Compile the quantized ONNX model at ``path`` in each mode and measure it on ``test``."""
    from pmsm_compiler.compiler import compile_model
    from pmsm_compiler.loading import load_model
    from pmsm_compiler.runtime import SNNSession, run_dataset
    from pmsm_compiler.sessions import make_session
    from pmsm_compiler.verify import verify

    ann = load_model(path)
    x = images(test, mean, std)
    y = test.y.astype(np.int64)
    result = {"model": os.path.basename(path), "test_images": len(test), "modes": {}}
    if float_path:
        result["float_accuracy"] = accuracy(make_session(load_model(float_path)), x, y)
    result["deployed_ann_accuracy"] = accuracy(make_session(ann, "all"), x, y)
    xv = x if verify_samples is None else images(test.evenly_spaced(verify_samples), mean, std)
    for mode in modes:
        start = time.perf_counter()
        compiled = compile_model(ann, mode=mode)
        compile_s = time.perf_counter() - start
        report = verify(ann, compiled, xv, mode=mode, data_label=f"{len(xv)} CIFAR-10 test images")
        reference = make_session(compiled.reference or ann, "all", qdq_fusion=False)
        start = time.perf_counter()
        run = run_dataset(SNNSession(compiled.model), test, max_t, batch_size, mean, std, ann_session=reference,
                          progress=False, model=os.path.basename(path))
        neurons = sum(layer.get("neurons") or 0 for layer in run["layers"])
        result["modes"][mode] = {
            "compile_s": round(compile_s, 2), "run_s": round(time.perf_counter() - start, 1),
            "layers": [{"name": l["name"], "s_min": l["s_min"], "s_max": l["s_max"], "theta": l["theta"]}
                       for l in compiled.layers],
            "wrappers": [w["op"] for w in compiled.info["wrappers"]],
            "verification": {k: report[k] for k in ("passed", "failures", "samples", "level_agreement",
                                                    "top1_agreement", "max_abs_diff", "deployed_ann")},
            "ann_accuracy": run["ann_accuracy"], "accuracy_by_t": run["accuracy_by_t"],
            "t1_prediction_agreement": run["t1_prediction_agreement"],
            "spikes_per_image_by_t": run["spikes_per_image_by_t"], "neurons": neurons,
        }
        m = result["modes"][mode]
        log(f"  {mode}: verification {'passed' if report['passed'] else 'FAILED'} (level agreement "
            f"{report['level_agreement']:.6f}, T=1 agreement {report['top1_agreement']:.4f}); ANN "
            f"{100 * m['ann_accuracy']:.2f} %, SNN T=1 {100 * m['accuracy_by_t'][0]:.2f} %, "
            f"{m['spikes_per_image_by_t'][0]:.4g} spikes/image at T=1")
    return result
