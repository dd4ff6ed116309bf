"""The offline side of edgerec: data → fine-tuning → evaluation → ONNX export →
optimization/quantization → validation → bundle. Needs torch and transformers."""
