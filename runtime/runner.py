"""Run a compiled SNN over a data set and build the ``pmsm-run`` report.

:func:`run_dataset` iterates over the data in batches; per batch it runs the SNN for T steps
(:class:`runtime.session.SNNSession`) and, when given, the ANN once (an onnxruntime session, at
the same optimization level as the SNN for the T = 1 agreement to be meaningful). It accumulates
only integers (int64): correct predictions per t, spikes per step per layer, every counting rule
per step per layer (models compiled with the counters), the ANN's correct predictions and its
T = 1 agreement with the SNN; :func:`runtime.report.summarize` turns them into the report.
"""

from __future__ import annotations

import sys
import time

import numpy as np

from pmsm_compiler.data.prepare import raw_pixels
from pmsm_compiler.errors import InputError
from pmsm_compiler.limits import check_timesteps
from pmsm_compiler.sessions import run_declared_batches

from .report import summarize


def _static_dims(shape):
    dims = list(shape[1:]) if shape else []
    return dims if dims and all(isinstance(d, int) for d in dims) else None


def _classes(session):
    """(name, number of classes) of the SNN's first output, when its per-sample size is static."""
    name = session.output_names[0]
    dims = _static_dims(session.output_dims(name))
    return name, (int(np.prod(dims)) if dims else None)


def check_compatible(session, dataset, ann_session=None) -> bool:
    """InputError (one line) if the data or the ANN do not fit the SNN's input, or the labels the
    SNN's classes. Returns whether the data feed the model raw (uint8 pixels, not normalized)."""
    names = [i.name for i in session.info.inputs]
    if len(names) != 1:
        raise InputError(f"the model has {len(names)} data inputs ({', '.join(repr(n) for n in names)}); pmsm-run "
                         f"feeds one")
    raw = raw_pixels(dataset, session.input_dtype, session.input_name)
    expected = _static_dims(session.input_shape)
    have = list(dataset.image_shape)
    if expected and have != expected:
        raise InputError(f"{dataset.name}: samples have shape {have} (CHW), the model expects {expected}")
    if dataset.y is not None and len(dataset.y):
        output, classes = _classes(session)
        top = int(dataset.y.max())
        if classes is not None and top >= classes:
            raise InputError(f"{dataset.name}: labels go up to {top}, but the model's output '{output}' has "
                             f"{classes} classes (labels 0..{classes - 1})")
    if ann_session is not None:
        ann_inputs = ann_session.get_inputs()
        if len(ann_inputs) != 1:
            raise InputError(f"the ANN has {len(ann_inputs)} inputs; pmsm-run supports one")
        if session.input_type is not None and ann_inputs[0].type != session.input_type:
            raise InputError(f"the ANN's input is {ann_inputs[0].type}, the SNN's is {session.input_type}")
        ann_dims = _static_dims(ann_inputs[0].shape)
        if ann_dims and ann_dims != have:
            raise InputError(f"the ANN expects inputs of shape {ann_dims}, the data has {have}")
    return raw


def run_dataset(session, dataset, timesteps: int, batch_size: int, mean, std, ann_session=None,
                progress: bool = True, limit: int | None = None, *, model: str | None = None) -> dict:
    """Run ``session`` (an SNNSession) on ``dataset`` for ``timesteps`` steps; return the report.

    ``mean``/``std`` normalize uint8 images (float32 data is used as is); ``limit`` keeps the
    first samples; ``ann_session`` (onnxruntime.InferenceSession of the source ANN) adds the ANN
    accuracy and the T = 1 prediction agreement. A tqdm progress bar goes to stderr.
    """
    from pmsm_compiler.data import iterate_batches

    timesteps = check_timesteps(timesteps)
    if batch_size < 1:
        raise InputError(f"batch size must be >= 1, got {batch_size}")
    if limit is not None:
        if limit < 1:
            raise InputError(f"limit must be >= 1, got {limit}")
        dataset = dataset.subset(limit)
    if len(dataset) == 0:
        raise InputError(f"{dataset.name}: no samples")
    raw = check_compatible(session, dataset, ann_session)
    labels = dataset.y is not None
    n_layers = len(session.layers)
    spikes = np.zeros((timesteps, n_layers), np.int64)
    counter_names = getattr(session, "counter_names", None)
    counters = np.zeros((timesteps, n_layers, len(counter_names)), np.int64) if counter_names else None
    correct = np.zeros(timesteps, np.int64)
    ann_correct = 0
    t1_agree = 0
    snn_seconds = ann_seconds = 0.0
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(dataset), unit="img", file=sys.stderr, desc=f"SNN T={timesteps}", leave=False)
    samples = 0
    # The one step of a T = 1 run of an exact-mode model runs in the ANN's form, the first step of
    # a longer run does not (it also computes the next states): they can differ in the last bits
    # (a transformer's attention), so t = 1 is taken from a T = 1 run of its own
    t1_run = timesteps > 1 and getattr(session, "ann_form", False)
    try:
        for xb, yb in iterate_batches(dataset, batch_size, mean, std, raw=raw):
            start = time.perf_counter()
            result = session.run_batch(xb, timesteps)
            first = session.run_batch(xb, 1).predictions_by_t[0] if t1_run else result.predictions_by_t[0]
            snn_seconds += time.perf_counter() - start
            spikes += result.spikes.sum(axis=1, dtype=np.int64)
            if counters is not None:
                counters += result.counters
            if labels:
                correct += (result.predictions_by_t == yb.astype(np.int64)[None, :]).sum(axis=1)
                correct[0] += int((first == yb).sum()) - int((result.predictions_by_t[0] == yb).sum())
            if ann_session is not None:
                start = time.perf_counter()
                out = run_declared_batches(ann_session, xb)
                ann_seconds += time.perf_counter() - start
                ann_pred = out.reshape(len(xb), -1).argmax(1)
                t1_agree += int((ann_pred == first).sum())
                if labels:
                    ann_correct += int((ann_pred == yb).sum())
            samples += len(xb)
            if bar is not None:
                bar.update(len(xb))
    finally:
        if bar is not None:
            bar.close()
    extra = {
        "data": dataset.name,
        "batch_size": int(batch_size),
        "seconds": {"snn": round(snn_seconds, 4), "ann": round(ann_seconds, 4) if ann_session is not None else None},
    }
    if t1_run:
        extra["t1_from"] = "a T = 1 run of its own (its step in the ANN's form)"
    return summarize(session.info, spikes, samples, timesteps,
                     correct_by_t=correct if labels else None,
                     ann_correct=ann_correct if (ann_session is not None and labels) else None,
                     t1_agree=t1_agree if ann_session is not None else None,
                     labels_present=labels, model=model, extra=extra,
                     counters_sum_by_t_layer=counters, counter_names=counter_names)
