"""Running a face embedder from any source: the one loader (`loading.load_model`: Keras, official `.h5`,
SavedModel, TFLite, ONNX, checkpoint names), the one embedding path (`embedding`: flip TTA, batching) and the
LiteRT runner. Evaluation, export, faces and training all embed through here."""
