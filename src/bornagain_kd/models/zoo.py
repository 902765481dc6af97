"""The paper's model zoo as `bornagain models` prints it: each model with the parameter count the BAN paper's
tables give beside the count of the model built here."""

from __future__ import annotations

# The paper's models (CIFAR-100) with the parameter counts the BAN paper's tables give, and the small members
# a CPU trains.
PAPER_ZOO = (
    ("BAN Table 1 (DenseNet-BC teachers)", (("densenet-bc-112-33", "6.3M"), ("densenet-bc-90-60", "16.1M"),
                                            ("densenet-bc-80-80", "22.4M"), ("densenet-bc-80-120", "50.4M"))),
    ("BAN Table 2 baselines", (("wrn-28-10", "36M"), ("wrn-28-20", "146M"), ("preresnet-1001", "10.2M"))),
    ("Wide-ResNets of the BAN paper's longer version", (("wrn-28-1", ""), ("wrn-28-2", ""))),
    ("Fast CIFAR family after airbench94, not the paper's (recipes fast-cifar10*)",
     (("airbench-64-256-256", ""), ("airbench-32-64-128", ""))),
    ("CPU-sized (recipes *-cpu, study-*)", (("resnet-8", ""), ("resnet-14", ""), ("resnet-20", ""),
                                            ("resnet-56", ""))),
)


def render_zoo(num_classes: int = 100) -> str:
    """The paper's zoo with parameter counts (built on the meta device: no memory, milliseconds)."""
    from bornagain_kd.models.registry import count_parameters  # noqa: PLC0415

    lines = [f"\nThe paper's models and others, {num_classes} classes (Table 2's Match students: --match-table):",
             f"  {'model':<22}{'parameters':>12}{'paper':>9}"]
    for group, models in PAPER_ZOO:
        lines.append(f"  {group}")
        lines += [f"    {name:<20}{count_parameters(name, num_classes) / 1e6:>11.2f}M{paper:>9}"
                  for name, paper in models]
    return "\n".join(lines) + "\n"
