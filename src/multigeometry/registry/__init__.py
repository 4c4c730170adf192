"""The MLflow model registry side of multigeometry: the pyfunc model that embeds raw inputs (`pyfunc`, `inputs`,
`summary`) and gated registration with an alias (`register`)."""

from multigeometry.registry.pyfunc import MultigeometryModel, build_package, load_package, log_pyfunc, unwrap
from multigeometry.registry.register import decide, register_model, tracking_uri

__all__ = [
    "MultigeometryModel",
    "build_package",
    "decide",
    "load_package",
    "log_pyfunc",
    "register_model",
    "tracking_uri",
    "unwrap",
]
