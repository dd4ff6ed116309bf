"""The contract every stage of edgerec shares, imported downward by export, runtime and benchmarks.

- `errors`: the one error type (`EdgeRecError`, `ErrorCode`);
- `settings`: typed, documented settings dataclasses and their flags;
- `signatures`: each model's inputs and outputs (names, dtypes, shapes), defined once;
- `featurize`: the one way (history, candidates) become token rows, for training and serving;
- `bundle`: the bundle format (named models, their precision variants, checksums);
- `sessions`: the one ONNX Runtime session factory (providers, threads, arena,
  spinning, TensorRT and CUDA options).

Nothing here imports torch or transformers: an edge box installs only the
runtime's light dependencies.
"""
