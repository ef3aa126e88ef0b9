import json
import re
import subprocess
import sys

import pytest

from benchmarks import table1

UNITS = {"G": 1e9, "M": 1e6}


@pytest.fixture(scope="module")
def res():
    return table1.measure((1024, 1024))


def _paper_value(s):
    num, unit = s[:-1], s[-1]
    decimals = len(num.split(".")[1]) if "." in num else 0
    return float(num) * UNITS[unit], 10 ** -decimals * UNITS[unit]


def test_parameters_are_the_papers_integers(res):
    assert res["rows"]["conv"]["params"] == [9408, 36864, 73728, 120000]
    assert res["rows"]["dsc"]["params"] == [339, 4672, 8768, 13779]


@pytest.mark.parametrize("kind", ["conv", "dsc"])
def test_costs_match_the_paper_to_its_rounding(res, kind):
    for measured, printed in zip(res["rows"][kind]["macs"], table1.PAPER[kind]["cost"]):
        value, last_digit = _paper_value(printed)
        # Within one unit of the last printed digit: the paper prints 306.1M for 306.18M.
        assert abs(measured - value) < last_digit, (measured, printed)


def test_flop_counter_agrees_with_eq_1_to_4(res):
    for kind in ("conv", "dsc"):
        analytic = res["rows"][kind]["analytic"]
        assert [p for p, _ in analytic] == res["rows"][kind]["params"][:3]
        assert [m for _, m in analytic] == res["rows"][kind]["macs"][:3]


def test_rows_the_paper_leaves_out(res):
    assert res["rows"]["ppm"]["params"][-1] == 12480
    assert abs(res["rows"]["ppm"]["macs"][-1] - 453e6) < 0.5e6
    assert res["rows"]["ckpt_conv3_conv_out"]["params"] == [36864, 8192, 45056]
    assert res["rows"]["dsc_bn"]["params"][-1] == 2 * (3 + 64 + 64 + 64 + 64 + 128)
    f = res["factors"]["paper (conv vs DSC)"]
    assert f["params"] == pytest.approx(120000 / 13779)


def test_cli_text_and_json():
    out = subprocess.run([sys.executable, "-m", "benchmarks.table1", "--size", "64", "64", "--json"],
                         capture_output=True, text=True, check=True).stdout
    data = json.loads(out)
    assert data["input"] == [1, 3, 64, 64]
    assert data["rows"]["dsc"]["params"][-1] == 13779
    text = subprocess.run([sys.executable, "-m", "benchmarks.table1", "--size", "64", "64"],
                          capture_output=True, text=True, check=True).stdout
    assert re.search(r"D\.S\.C parameters, measured\s+\|\s+339", text)
