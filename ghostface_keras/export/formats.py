"""What can be exported (plain data, importable without TensorFlow so command lines can offer the choices)."""

FORMATS = ("savedmodel", "tflite", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic", "int8")
