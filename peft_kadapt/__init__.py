"""KAdaptation (Kronecker adaptation for vision transformers) as a Hugging Face PEFT method.

`import peft_kadapt` registers the method with PEFT under the name "kadaptation"; after that `get_peft_model`,
`PeftModel.from_pretrained` and `AutoPeftModel.from_pretrained` accept `KAdaptationConfig` adapters.
"""

from ._registration import METHOD_NAME, PREFIX, ensure_peft_type, register


ensure_peft_type()

from .config import KAdaptationConfig  # noqa: E402
from .layer import KAdaptationLayer, Linear  # noqa: E402
from .model import KAdaptationModel  # noqa: E402


register()

__version__ = "0.1.0"
__all__ = ["KAdaptationConfig", "KAdaptationLayer", "KAdaptationModel", "Linear", "METHOD_NAME", "PREFIX", "register"]
