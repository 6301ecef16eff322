"""The build stage: source weights -> verified ONNX model folder. Needs `pip install '.[export]'`.

bgeort (the runtime) never imports this package.
"""

from .pipeline import export_model

__all__ = ["export_model"]
