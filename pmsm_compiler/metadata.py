"""JSON values in an ONNX model's ``metadata_props`` (torch-free: used by export and compiler)."""

from __future__ import annotations

import json

import numpy as np
import onnx

from pmsm_compiler.errors import InputError


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def set_metadata(proto: onnx.ModelProto, key: str, value) -> None:
    text = value if isinstance(value, str) else json.dumps(value, default=_json_default)
    for prop in proto.metadata_props:
        if prop.key == key:
            prop.value = text
            return
    proto.metadata_props.add(key=key, value=text)


def get_metadata(proto: onnx.ModelProto, key: str, default=None):
    for prop in proto.metadata_props:
        if prop.key == key:
            try:
                return json.loads(prop.value)
            except json.JSONDecodeError as exc:
                raise InputError(f"metadata {key!r} is not valid JSON: {exc}") from None
    return default
