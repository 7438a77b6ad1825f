"""study.bar reads issue 27's bar from a real committed report, and each criterion turns on its figure."""

import copy
import json
from pathlib import Path

import pytest

from study.bar import criteria, passes

REPORT = Path(__file__).resolve().parent.parent / "study" / "adapters" / "sft" / "eval" / "report.json"


@pytest.fixture(scope="module")
def report():
    return json.loads(REPORT.read_text())


def test_each_criterion_is_read_from_the_report(report):
    found = criteria(report)
    assert len(found) == 5 and passes(report) == all(c["met"] for c in found)
    loop = report["defects"]["loop"]
    assert f"{loop['tuned']['rate']:.0%} vs {loop['base']['rate']:.0%}" in found[0]["measured"]


def test_each_criterion_turns_on_its_own_figure(report):
    good = copy.deepcopy(report)
    good["defects"]["loop"].update(
        base={"rate": 0.2}, tuned={"rate": 0.05}, test={"better": 9, "worse": 1, "p_value": 0.01}
    )
    good["defects"]["end"].update(base={"rate": 0.5}, tuned={"rate": 0.7})
    good["judge_verdicts"]["per_prompt"].update(
        win={"rate": 0.6}, test={"better": 40, "worse": 20, "p_value": 0.01}
    )
    good["judge_verdicts"]["length_controlled"]["rate"] = 0.52
    good["preference"]["base"]["accuracy"]["rate"] = 0.70
    good["preference"]["tuned"]["accuracy"]["rate"] = 0.69
    assert passes(good)
    for path, value in [
        (("defects", "loop", "tuned", "rate"), 0.11),  # more than half the base's
        (("defects", "loop", "test", "p_value"), 0.2),
        (("defects", "end", "tuned", "rate"), 0.6),  # 10 points, not 15
        (("judge_verdicts", "per_prompt", "win", "rate"), 0.54),
        (("judge_verdicts", "length_controlled", "rate"), 0.49),
        (("preference", "tuned", "accuracy", "rate"), 0.67),  # 3 points below
    ]:
        bad = copy.deepcopy(good)
        *parents, key = path
        target = bad
        for name in parents:
            target = target[name]
        target[key] = value
        assert not passes(bad), path
