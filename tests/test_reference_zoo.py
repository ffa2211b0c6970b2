"""The runtime against the step-by-step reference on zoo models, T = 8: ResNet-tiny (BatchNorm with
ε = 0.1 and random statistics) and ViT-tiny (LayerNorm, Softmax, two-input MatMul wrappers), both
with λ calibrated on the inputs, in both modes.

Per model and mode: ``SNNSession.run_batch`` equals ``run_reference`` bit for bit (spikes, outputs
and running means at every t, predictions), the counters equal Σ|k| of the spike tensors, the
accuracy at every t that ``run_dataset`` reports (two batches) equals the reference's, and the
spikes and running means follow rate coding computed from the ANN (``run_rate_coded_ann``) within
the fuzzer's bounds.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pmsm_compiler.compiler import compile_model  # noqa: E402
from pmsm_compiler.data import Dataset  # noqa: E402
from pmsm_compiler.loading import load_model  # noqa: E402
from pmsm_compiler.runtime import SNNSession, run_dataset  # noqa: E402
from pmsm_compiler.testing import fuzz  # noqa: E402
from pmsm_compiler.testing.reference import quantizer_node_neurons, run_rate_coded_ann, run_reference  # noqa: E402
from pmsm_compiler.verify import make_session  # noqa: E402

T = 8
N = 6


def calibrate(net, x, passes=3):
    """λ of every quantizer from the signal it sees: 95th percentile of its positive input (so
    that its levels are used, not all saturated or all zero); repeated so that each layer sees
    its calibrated predecessors."""
    from pmsm_compiler.activations import quantized_activations

    seen = {}
    hooks = [m.register_forward_pre_hook(lambda m, args, name=name: seen.__setitem__(name, args[0].detach()))
             for name, m in quantized_activations(net)]
    try:
        for _ in range(passes):
            with torch.no_grad():
                net(x)
            for name, m in quantized_activations(net):
                v = seen[name].flatten()
                pos = v[v > 0]
                m.lam.data.fill_(float(torch.quantile(pos if pos.numel() > 2 else v.abs(), 0.95)) or 1.0)
    finally:
        for h in hooks:
            h.remove()


@pytest.fixture(scope="module", params=["resnet_tiny", "vit_tiny"])
def zoo(request, tmp_path_factory):
    from pmsm_compiler.export import export_onnx
    from pmsm_compiler.models import build_model

    torch.manual_seed(3)
    net = build_model(request.param, act="pqa").eval()
    gen = torch.Generator().manual_seed(4)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            c = m.num_features
            m.eps = 0.1  # non-default ε: folded mode must use it
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
    x = torch.randn(N, 3, 32, 32, generator=gen)
    calibrate(net, x)
    path = tmp_path_factory.mktemp(request.param) / f"{request.param}.onnx"
    export_onnx(net, str(path))
    return request.param, load_model(path), x.numpy()


@pytest.mark.parametrize("mode", ["exact", "folded"])
def test_runtime_against_reference_t8(zoo, mode):
    name, ann, x = zoo
    compiled = compile_model(ann, mode=mode)
    info = compiled.info
    if name == "vit_tiny":
        assert {"LayerNormalization", "Softmax", "MatMul"} <= {w["op"] for w in info["wrappers"]}
        assert any(len([s for s in info["states"] if s.get("wrapper") == w["name"] and s["kind"] == "input_sum"]) == 2
                   for w in info["wrappers"]), "no two-input wrapper"
    ref = run_reference(compiled, x, T, keep_levels=True)
    result = SNNSession(compiled.model).run_batch(x, T, keep_outputs=True)
    assert np.array_equal(result.spikes, ref.spikes)
    assert np.array_equal(result.outputs_by_t, ref.outputs_by_t)
    assert np.array_equal(result.mean_outputs, ref.mean_outputs)
    assert np.array_equal(result.predictions_by_t, ref.predictions_by_t)
    assert np.array_equal(ref.spikes, ref.spikes_recomputed) and not ref.non_integer_spikes
    assert ref.spikes.sum() > 0

    # accuracy at every t, as pmsm-run reports it (two batches), against the reference's; labels:
    # the ANN's class for even samples, another class for odd ones
    labels = make_session(ann).run(None, {"input": x})[0].argmax(1)
    labels[1::2] = (labels[1::2] + 1) % 10
    report = run_dataset(SNNSession(compiled.model), Dataset(x.astype(np.float32), labels), T, batch_size=N // 2,
                         mean=None, std=None, progress=False)
    assert report["accuracy_by_t"] == [float(np.mean(p == labels)) for p in ref.predictions_by_t]
    if mode == "exact":
        assert report["accuracy_by_t"][0] == 0.5  # lossless at T = 1

    # T > 1 follows rate coding computed from the ANN
    ideal = run_rate_coded_ann(ann, quantizer_node_neurons(ann, info), x, T)
    stats = {}
    assert not fuzz._rate_semantics(ideal, ref, info, quantizer_node_neurons(ann, info), N, stats), stats
