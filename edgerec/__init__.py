"""edgerec: a BERT cross-encoder recommender from fine-tuning to the edge.

The code lives in the top-level folders `export/`, `runtime/`, `benchmarks/`
and `proto/`, installed as `edgerec.export`, `edgerec.runtime`, … . This
package holds only what every stage shares: the command line and settings.
"""

__version__ = "0.1.0"
