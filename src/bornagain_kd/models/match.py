""""Match" students: networks whose widths are read off a DenseNet-BC teacher,
block by block, so that they can share the teacher's first and last layer
(BAN paper, Table 2).

Notation, for a teacher DenseNet-BC-L-k with dense blocks b = 1, 2, 3:

- in_b: channels entering block b (in_1 = 2k, the stem's output);
- t_b: the block's width after its 1x1 transition conv, before down-sampling,
  t_b = floor(theta * out_b) with theta = 0.5; the last block has no transition,
  so we use the width one *would* give it, t_3 = theta * F, where F is the
  teacher's final feature width (the classifier's input);
- round(x) rounds half up, and every width is at least 1.

Every Match student has the teacher's stem (3x3 conv, in_channels -> 2k) and a
classifier Linear(F -> classes), so both can be copied with
``share_stem_and_head``. When its last stage is narrower than F, a
BN-ReLU-Conv1x1 projection to F (the layer type of a DenseNet transition)
sits before the final BN-ReLU-pool. Widening the last stage itself to F
instead roughly doubles the counts (Match-Wide-ResNet-1-1: 40M against the
paper's 20.9M); with the projection they land within 6% of the paper's.

The paper's teacher is DenseNet-BC-90-60 (the default ``teacher=``). A 90-60
with 14 units in every block (t = 480, 660, 750; what integer division
(90-4)//6 gives) reproduces the paper's four Match-Wide-ResNet counts within
1% (4-0.5: -8%), a hint of what the authors' code did; our depth rule gives
(15, 14, 14) units (t = 510, 675, 757.5) and is closer over Tables 1 and 2 as
a whole (mean |log(ours/paper)| 0.093 against 0.100); see densenet.py.
"""

from __future__ import annotations

import math

from bornagain_kd.errors import UserError
from bornagain_kd.models.common import positive_int, positive_ratio
from bornagain_kd.models.densenet import COMPRESSION, DenseNet, DenseNetGeometry, densenet_geometry
from bornagain_kd.models.preresnet import PreActResNet
from bornagain_kd.models.registry import count_parameters, parse_model_name, register_model
from bornagain_kd.models.wide_resnet import WideResNet, check_dropout

DEFAULT_TEACHER = "densenet-bc-90-60"


def teacher_geometry(teacher: str, name: str) -> DenseNetGeometry:
    """Widths of the DenseNet-BC teacher named ``teacher`` (e.g. "densenet-bc-90-60")."""
    if not isinstance(teacher, str):
        raise UserError(f"model {name!r}: teacher must be a DenseNet-BC model name such as {DEFAULT_TEACHER!r}")
    pattern, fields = parse_model_name(teacher)
    if pattern != "densenet-bc-{depth}-{growth}":
        raise UserError(
            f"model {name!r}: Match students read their widths from a DenseNet-BC teacher, "
            f"got teacher={teacher!r}; pass teacher='densenet-bc-<depth>-<growth>' (the paper uses {DEFAULT_TEACHER!r})"
        )
    return densenet_geometry(fields["depth"], fields["growth"], teacher)


def matched_widths(geo: DenseNetGeometry) -> tuple[float, float, float]:
    """(t_1, t_2, t_3): post-transition widths of the teacher's blocks, t_3 = theta * F."""
    return (float(geo.transition_outputs[0]), float(geo.transition_outputs[1]), COMPRESSION * geo.final_width)


def scaled(ratio: float, width: float) -> int:
    """round(ratio * width), half up, at least 1."""
    return max(1, math.floor(ratio * width + 0.5))


@register_model("match-wrn-{units}-{ratio}")
def match_wide_resnet(
    units: int,
    ratio: float,
    num_classes: int,
    in_channels: int = 3,
    teacher: str = DEFAULT_TEACHER,
    dropout: float = 0.0,
    name: str = "",
) -> WideResNet:
    """Match-Wide-ResNet-N-R: N pre-activation basic units per stage (dropout
    between the convs, default 0); stage b has width w_b = round(R * t_b),
    strides 1, 2, 2. Stem: the teacher's (2k channels). Head: BN-ReLU-Conv1x1
    w_3 -> F when w_3 != F (R = 2 gives w_3 = F and no projection), then
    BN-ReLU-pool and Linear(F -> classes), shareable with the teacher.
    Teacher DenseNet-BC-90-60 (units 15, 14, 14; F = 1515): t = (510, 675,
    757.5), so R = 1 gives w = (510, 675, 758) and a 758 -> 1515 projection.
    """
    name = name or f"match-wrn-{units}-{ratio}"
    units = positive_int(units, "units per stage N", name)
    ratio = positive_ratio(ratio, "width ratio R", name)
    geo = teacher_geometry(teacher, name)
    return WideResNet(
        stage_widths=[scaled(ratio, t) for t in matched_widths(geo)],
        units=units,
        num_classes=num_classes,
        in_channels=in_channels,
        stem_channels=geo.stem_channels,
        dropout=check_dropout(dropout, name),
        head_width=geo.final_width,
    )


@register_model("match-preresnet-{units}-{ratio}")
def match_preresnet(
    units: int, ratio: float, num_classes: int, in_channels: int = 3, teacher: str = DEFAULT_TEACHER, name: str = ""
) -> PreActResNet:
    """Match-Pre-ResNet-N-R: N pre-activation bottleneck units per stage; stage b
    carries the teacher's matched width t_b in its residual stream
    (out_b = round(t_b)) and R scales the bottleneck (inner) width,
    m_b = round(R * t_b / 4), as the widening factor of Wide-ResNet-50-2 does;
    R = 1 is the standard expansion of 4. (Scaling the residual width by R as
    well gives 5.7M instead of 9.3M for 14-0.5 against the paper's 7.3M: equally
    far, but it misses the paper's 0.41 ratio between 14-0.5 and 14-1, which
    this rule gives: 0.43.) Stem, projection to F and classifier as Match-Wide-ResNet.
    """
    name = name or f"match-preresnet-{units}-{ratio}"
    units = positive_int(units, "units per stage N", name)
    ratio = positive_ratio(ratio, "bottleneck width ratio R", name)
    geo = teacher_geometry(teacher, name)
    widths = matched_widths(geo)
    return PreActResNet(
        stage_widths=[scaled(1.0, t) for t in widths],
        bottleneck_widths=[scaled(ratio, t / 4) for t in widths],
        units=units,
        num_classes=num_classes,
        in_channels=in_channels,
        stem_channels=geo.stem_channels,
        head_width=geo.final_width,
    )


@register_model("match-densenet-{units}-{in_ratio}-{out_ratio}")
def match_densenet(
    units: int,
    in_ratio: float,
    out_ratio: float,
    num_classes: int,
    in_channels: int = 3,
    teacher: str = DEFAULT_TEACHER,
    name: str = "",
) -> DenseNet:
    """Match-DenseNet-N-A-B: a DenseNet-BC (bottleneck units, 3 blocks) with N
    units per block. Block b starts at c_b = round(A * in_b) channels (c_1 = 2k,
    the shared stem, whatever A) and is meant to end at round(B * t_b); its
    growth rate is k_b = max(1, round((round(B * t_b) - c_b) / N)), so it ends at
    c_b + N * k_b. The transition after block b is a 1x1 conv to c_{b+1}.
    So N-1-2 is the teacher's width profile with N units per block
    (ends at 2 t_b = out_b); B = 2A halves/scales it uniformly. If the last
    block does not end at F, a 1x1 projection to F precedes the shared classifier.
    """
    name = name or f"match-densenet-{units}-{in_ratio}-{out_ratio}"
    units = positive_int(units, "units per block N", name)
    in_ratio = positive_ratio(in_ratio, "input ratio A", name)
    out_ratio = positive_ratio(out_ratio, "output ratio B", name)
    geo = teacher_geometry(teacher, name)
    starts = [geo.stem_channels] + [scaled(in_ratio, c) for c in geo.block_inputs[1:]]
    ends = [scaled(out_ratio, t) for t in matched_widths(geo)]
    growth = []
    for b, (start, end) in enumerate(zip(starts, ends)):
        if end <= start:
            raise UserError(
                f"model {name!r}: block {b + 1} would start at {start} channels and end at {end}, "
                f"so it cannot grow; use an output ratio B larger than about 2x the input ratio A (e.g. 1-2)"
            )
        growth.append(max(1, math.floor((end - start) / units + 0.5)))
    return DenseNet(
        block_units=(units,) * 3,
        growth_rates=growth,
        stem_channels=geo.stem_channels,
        transition_widths=starts[1:],
        num_classes=num_classes,
        in_channels=in_channels,
        head_width=geo.final_width,
    )


# ---- parameter counts beside the paper's (CIFAR-100) -------------------------

# (network as the paper writes it, our model name, paper's count in millions)
TABLE_1 = [
    ("DenseNet-BC-112-33", "densenet-bc-112-33", 6.3),
    ("DenseNet-BC-90-60", "densenet-bc-90-60", 16.1),
    ("DenseNet-BC-80-80", "densenet-bc-80-80", 22.4),
    ("DenseNet-BC-80-120", "densenet-bc-80-120", 50.4),
]
TABLE_2 = [
    ("Pre-activation ResNet-1001", "preresnet-1001", 10.2),
    ("Match-Pre-ResNet-14-0.5", "match-preresnet-14-0.5", 7.3),
    ("Match-Pre-ResNet-14-1", "match-preresnet-14-1", 17.7),
    ("Wide-ResNet-28-10", "wrn-28-10", 36.0),
    ("Wide-ResNet-28-20", "wrn-28-20", 146.0),
    ("Match-Wide-ResNet-1-1", "match-wrn-1-1", 20.9),
    ("Match-Wide-ResNet-2-1", "match-wrn-2-1", 43.1),
    ("Match-Wide-ResNet-4-0.5", "match-wrn-4-0.5", 24.3),
    ("Match-Wide-ResNet-4-1", "match-wrn-4-1", 87.3),
    ("Match-DenseNet-7-1-2", "match-densenet-7-1-2", 21.2),
    ("Match-DenseNet-14-0.5-1", "match-densenet-14-0.5-1", 5.1),
    ("Match-DenseNet-14-0.75-1.5", "match-densenet-14-0.75-1.5", 10.1),
    ("Match-DenseNet-14-1-3", "match-densenet-14-1-3", 80.5),
    ("Match-DenseNet-28-1-2", "match-densenet-28-1-2", 13.7),
    ("Match-DenseNet-42-1-2", "match-densenet-42-1-2", 12.9),
    ("Match-DenseNet-56-1-2", "match-densenet-56-1-2", 12.6),
]


def _rows(table: list[tuple[str, str, float]], num_classes: int, teacher: str) -> list[dict]:
    rows = []
    for network, model, paper_m in table:
        kwargs = {"teacher": teacher} if model.startswith("match-") else {}
        params = count_parameters(model, num_classes, **kwargs)  # meta device: no memory
        rows.append(
            {
                "network": network,
                "model": model,
                "paper_params_m": paper_m,
                "params": params,
                "params_m": params / 1e6,
                "diff_pct": 100.0 * (params / 1e6 - paper_m) / paper_m,
            }
        )
    return rows


def match_parameter_table(num_classes: int = 100, teacher: str = DEFAULT_TEACHER) -> list[dict]:
    """Table 2 of the paper: for each row, ``network`` (the paper's name),
    ``model`` (ours), ``paper_params_m``, ``params`` (ours, exact),
    ``params_m`` and ``diff_pct`` = 100 (ours - paper) / paper."""
    return _rows(TABLE_2, num_classes, teacher)


def densenet_parameter_table(num_classes: int = 100) -> list[dict]:
    """Table 1 of the paper (the DenseNet-BC teachers), same columns."""
    return _rows(TABLE_1, num_classes, DEFAULT_TEACHER)


def render_parameter_table(rows: list[dict]) -> str:
    """A markdown table (ending in a newline) of ``match_parameter_table`` /
    ``densenet_parameter_table`` rows."""
    lines = ["| Network (paper) | Model name | Paper | Ours | Ours vs paper |", "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(
            f"| {r['network']} | `{r['model']}` | {r['paper_params_m']:.1f} M | "
            f"{r['params_m']:.2f} M | {r['diff_pct']:+.1f}% |"
        )
    return "\n".join(lines) + "\n"


render_match_table = render_parameter_table  # the name the CLI (`bornagain models --match-table`) imports
