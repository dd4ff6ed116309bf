"""The serving side of edgerec: a request goes transport -> admission -> scheduler -> worker -> backend.

- transports: `server` (assembly, lifecycle), `recommender_service` (edgerec.v1),
  `kserve_service` (KServe v2), `status` (errors to gRPC statuses), `auth`;
- `model_version`: a loaded bundle, one instance (backend + batcher) per model;
- `pipeline`: the cross-encoder's request path (validation, pairs, top k);
- `batcher` with `admission`, `scheduler`, `worker`: dynamic batching;
- `backends`: the code that runs a model variant (ONNX Runtime).

Nothing under this package may import torch or transformers: an edge box
installs only `edgerec[runtime]`.
"""
