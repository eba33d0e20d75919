"""Usage errors of the renkei CLI never echo a My Number the user mistyped into a flag."""

from __future__ import annotations

import random

import pytest

from infra.cli import build_parser
from infra.core.arguments import hide_digit_runs
from infra.domain.validation import generate_my_number


def test_long_digit_runs_are_hidden_short_ones_kept():
    mn = generate_my_number(random.Random(1))
    assert hide_digit_runs(f"unrecognized arguments: {mn}") == "unrecognized arguments: [digits hidden]"
    assert hide_digit_runs(f"x {mn[:4]}-{mn[4:8]} {mn[8:]} y") == "x [digits hidden] y"
    assert hide_digit_runs("12345678901") == "[digits hidden]"  # a mistyped, 11-digit one too
    # bank, branch and account numbers, counts and ports stay readable
    assert hide_digit_runs("--bank 9000 --branch 123 --number 0012345 --port 8080") == \
        "--bank 9000 --branch 123 --number 0012345 --port 8080"


@pytest.mark.parametrize("argv", [
    ["portal", "records", "--card", "card-1", "--pin", "-", "--hoder", "{mn}"],  # a misspelt flag: the unknown arguments
    ["agency", "inquire", "--agency", "agency-nta", "--procedure", "income-tax-refund", "--my-number", "x",
     "{mn}"],  # one argument too many
    ["bank", "apply-lookup", "--bank", "9000", "--kind", "{mn}", "--my-number", "-"],  # an invalid choice is echoed
    ["bank", "serve", "--bank", "9000", "--channel", "files", "--listen-port", "{mn}x"],  # an invalid int
])
def test_a_usage_error_does_not_echo_the_number(argv, capsys):
    mn = generate_my_number(random.Random(2))
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args([a.format(mn=mn) for a in argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "[digits hidden]" in err and mn not in err and mn[:10] not in err
