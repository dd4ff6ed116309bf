"""The serving side of edgerec: featurization, batching, engines and the gRPC server.

Nothing under this package may import torch or transformers: an edge box
installs only `edgerec[runtime]`.
"""
