#!/usr/bin/env python3
"""Checks an exported fedslice bundle against the Python ecosystem.

1. timm builds the encoder from config.json's `timm.kwargs`, loads the
   encoder tensors of model.safetensors with strict=True, and its pooled
   features (the CLS token or the mean patch token, as `global_pool` says)
   match the Rust encoder's slice embeddings (given as a raw float32 file).
2. onnxruntime runs model.onnx (when the bundle has one) and its exam logit
   and slice logits match the Rust model's.

Usage: timm_parity.py BUNDLE INPUT.f32 SLICES FEATURES.f32 LOGITS.f32
  INPUT.f32   float32 little-endian [SLICES, 1, H, W] (preprocessed exam)
  FEATURES.f32 float32 [SLICES, D]  Rust slice embeddings
  LOGITS.f32  float32 [1 + SLICES]  Rust exam logit, then slice logits
Exit 0 when every difference is within 1e-4; prints the measured maxima.
"""
import json
import sys
from pathlib import Path

import numpy as np
import safetensors.torch
import timm
import torch

TOL = 1e-4


def main() -> int:
    bundle, inp, slices, cls_path, logits_path = sys.argv[1:6]
    bundle = Path(bundle)
    slices = int(slices)
    config = json.loads((bundle / "config.json").read_text())
    kwargs = config["timm"]["kwargs"]
    size = kwargs["img_size"]
    x = np.fromfile(inp, dtype="<f4").reshape(slices, 1, size, size)
    want_cls = np.fromfile(cls_path, dtype="<f4").reshape(slices, -1)
    want_logits = np.fromfile(logits_path, dtype="<f4")

    tensors = safetensors.torch.load_file(str(bundle / "model.safetensors"))
    encoder = {k: v for k, v in tensors.items() if not k.startswith("exam.")}
    model = timm.models.vision_transformer.VisionTransformer(**kwargs)
    model.load_state_dict(encoder, strict=True)
    model.eval()
    name = config["timm"].get("model_name")
    if name:
        # The registry model of that name takes the same tensors.
        registry = timm.create_model(name, pretrained=False, in_chans=1, num_classes=0)
        registry.load_state_dict(encoder, strict=True)
    with torch.no_grad():
        got_cls = model(torch.from_numpy(x)).numpy()
    cls_diff = float(np.abs(got_cls - want_cls).max())
    print(f"timm {timm.__version__} (global_pool={kwargs['global_pool']!r}): features {got_cls.shape}, max |timm - rust| = {cls_diff:.2e}")
    ok = cls_diff <= TOL

    onnx_path = bundle / "model.onnx"
    if onnx_path.exists():
        import onnxruntime as ort

        session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
        outputs = session.run(None, {session.get_inputs()[0].name: x})
        names = [o.name for o in session.get_outputs()]
        got = dict(zip(names, outputs))
        logit = np.asarray(got["logit"]).reshape(-1)
        slice_logits = np.asarray(got["slice_logits"]).reshape(-1)
        logit_diff = float(np.abs(logit - want_logits[:1]).max())
        slice_diff = float(np.abs(slice_logits - want_logits[1:]).max())
        print(
            f"onnxruntime {ort.__version__}: max |ort - rust| logit {logit_diff:.2e}, "
            f"slice logits {slice_diff:.2e}"
        )
        ok = ok and logit_diff <= TOL and slice_diff <= TOL
    else:
        print("no model.onnx in the bundle: onnxruntime check not run")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
