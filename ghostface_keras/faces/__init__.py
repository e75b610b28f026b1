"""Photos and video to decisions: detectors (`mtcnn`, `blazeface`, chosen by name in `detectors`), 5-point
alignment (`alignment`, `align_folder`), the `FaceEmbedder` (`embedder`), video and tracking, and the
TensorFlow-free phone path (`litert_pipeline`)."""
