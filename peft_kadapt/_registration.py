"""The only code that touches PEFT's global registries. Every function here is idempotent."""

from __future__ import annotations

from peft.utils import PeftType


METHOD_NAME = "kadaptation"
PREFIX = "kadapt_"


def ensure_peft_type() -> PeftType:
    """Add `PeftType.KADAPTATION` to PEFT's closed enum, once."""
    member_name = METHOD_NAME.upper()
    if member_name in PeftType._member_map_:
        return PeftType._member_map_[member_name]
    member = str.__new__(PeftType, member_name)
    member._name_ = member_name
    member._value_ = member_name
    member.__objclass__ = PeftType
    member._sort_order_ = len(PeftType._member_names_)
    # set the class attribute before the member maps: EnumType refuses to reassign a known member
    type.__setattr__(PeftType, member_name, member)
    PeftType._member_map_[member_name] = member
    PeftType._value2member_map_[member_name] = member
    PeftType._member_names_.append(member_name)
    return member


def register_classes(config_cls, model_cls) -> None:
    """Register the `kadaptation` method with PEFT. Safe to call any number of times, also after a reload."""
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING
    from peft.utils import register_peft_method

    peft_type = ensure_peft_type()
    for other_type, other_prefix in PEFT_TYPE_TO_PREFIX_MAPPING.items():
        # PEFT's own uniqueness check compares keys, not values
        if other_type != peft_type and other_prefix == PREFIX:
            raise ValueError(f"The adapter prefix {PREFIX!r} is already used by the PEFT method {other_type!r}.")
    if peft_type in PEFT_TYPE_TO_TUNER_MAPPING:
        _update_registered_classes(config_cls, model_cls)
        return
    register_peft_method(name=METHOD_NAME, config_cls=config_cls, model_cls=model_cls, prefix=PREFIX)


def _update_registered_classes(config_cls, model_cls) -> None:
    # after importlib.reload the classes are new objects: point the registries at them
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING, PEFT_TYPE_TO_TUNER_MAPPING

    PEFT_TYPE_TO_CONFIG_MAPPING[PeftType.KADAPTATION] = config_cls
    PEFT_TYPE_TO_TUNER_MAPPING[PeftType.KADAPTATION] = model_cls
