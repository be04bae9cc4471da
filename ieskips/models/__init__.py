"""IE-ResNet model library: the IE-Skip block, PreAct ResNets, WRN-34-10 and SwResNet-58."""
from .ie_skip import INNER_GRAD_MODES, ExplicitEuler, IESkip, has_ie_skips, inner_grad_mode
from .registry import build_model, list_models, register_model
from . import resnet  # noqa: F401  (registers the models)
from .blocks import NORMS

__all__ = ["ExplicitEuler", "IESkip", "INNER_GRAD_MODES", "has_ie_skips", "inner_grad_mode", "NORMS", "build_model", "list_models", "register_model"]
