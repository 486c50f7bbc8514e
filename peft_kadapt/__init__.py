"""KAdaptation (Kronecker adaptation for vision transformers) as a Hugging Face PEFT method.

`import peft_kadapt` registers the method with PEFT under the name "kadaptation"; after that `get_peft_model`,
`PeftModel.from_pretrained` and `AutoPeftModel.from_pretrained` accept `KAdaptationConfig` adapters.
"""

from ._registration import METHOD_NAME, PREFIX, ensure_peft_type, register_classes


ensure_peft_type()

from .config import KAdaptationConfig
from .layer import Conv2d, KAdaptationLayer, Linear
from .model import KAdaptationModel


def register() -> None:
    """Register the `kadaptation` method with PEFT (done on import). Safe to call any number of times."""
    register_classes(KAdaptationConfig, KAdaptationModel)


register()

__version__ = "0.1.0"
__all__ = [
    "Conv2d",
    "KAdaptationConfig",
    "KAdaptationLayer",
    "KAdaptationModel",
    "Linear",
    "METHOD_NAME",
    "PREFIX",
    "register",
]
