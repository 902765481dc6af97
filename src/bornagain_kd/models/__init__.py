"""The CIFAR model zoo: a small registry plus one file per family.

    from bornagain_kd.models import create_model, share_stem_and_head
    teacher = create_model("densenet-bc-90-60", num_classes=100)
    student = create_model("match-wrn-2-1", 100, teacher="densenet-bc-90-60")
    share_stem_and_head(teacher, student)  # copy + freeze first conv and classifier

Every model has ``stem`` (first nn.Conv2d), ``classifier`` (last nn.Linear)
and ``num_features`` (the classifier's input width).
"""

# Importing the family files registers them (@register_model at import time).
from bornagain_kd.models import airbench, densenet, match, preresnet, resnet, wide_resnet  # noqa: F401
from bornagain_kd.models.match import densenet_parameter_table, match_parameter_table, render_parameter_table
from bornagain_kd.models.registry import (count_parameters, create_model, list_models, model_options, parse_model_name,
                                       register_model)
from bornagain_kd.models.sharing import check_shareable, share_stem_and_head

__all__ = [
    "check_shareable",
    "count_parameters",
    "create_model",
    "densenet_parameter_table",
    "list_models",
    "match_parameter_table",
    "parse_model_name",
    "register_model",
    "render_parameter_table",
    "share_stem_and_head",
]
