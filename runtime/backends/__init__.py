"""Backends: the code that runs one variant of one model (Triton's backends, TEI's `backends/*`).

`base.Backend` is the one contract the serving core relies on
(`initialize` / `execute(feeds) -> outputs` / `finalize`); `onnx.OnnxBackend`
runs a bundle model's ONNX variant through ONNX Runtime. Batching, queues and
requests live outside: a backend only turns named input tensors into named
output tensors.
"""
