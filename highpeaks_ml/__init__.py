"""High Peaks ML Platform: train scikit-learn models, export them to ONNX, serve them over gRPC."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("highpeaks-ml")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0"

__all__ = ["__version__"]
