"""edgerec: a BERT recommender for e-commerce, from fine-tuning to the edge.

The code lives in the top-level folders `export/`, `runtime/`, `benchmarks/`
and `proto/`, installed as `edgerec.export`, `edgerec.runtime`, … . This
package holds what every stage shares: the command line (`edgerec.cli`) and
the contract between stages (`edgerec.core`: settings, errors, model
signatures, featurizer, bundle format, ONNX Runtime session factory).
"""

__version__ = "0.1.0"
