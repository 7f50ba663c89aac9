"""QA verdicts (contimg/qa.py): `contimg qa RUN --pass|--fail|--null [--report F] [--analyst A]`.

What these check
----------------
- the verdict is recorded with the analyst (default: the login name) and the date, the
  report is copied into the run directory as qa_report.txt, and the run's weblog (and the
  night's QA column) show the verdict and the report;
- a later verdict without a report keeps the earlier report;
- an unknown run id, a malformed one, a missing report file, and two verdicts at once are
  one-line errors (or a usage error) and record nothing.
"""

from __future__ import annotations

import json

import pytest

from contimg import database as db
from contimg import products, weblog
from contimg.qa import login_name

from test_archive import DATE, RUN, archive_config, cli, fabricate_run


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    return archive_config(tmp_path, monkeypatch)


def test_verdict_with_report_reaches_database_and_weblog(cfg, capsys, tmp_path):
    fabricate_run(cfg)
    report = tmp_path / "my report.txt"
    report.write_text("bandpass of DSA-017 <noisy>; images fine\n")
    code, out, err = cli(capsys, "qa", RUN, "--pass", "--report", str(report), "--analyst", "alice", "--json")
    assert code == 0, err
    rec = json.loads(out)
    assert rec["state"] == "pass" and rec["analyst"] == "alice" and rec["at"].endswith("Z")
    copied = products.run_file(cfg.paths.products_root, RUN, "qa_report.txt")
    assert rec["report_path"] == str(copied) and copied.read_text() == report.read_text()
    assert db.qa(cfg.database_url, RUN)["report"] == report.read_text()
    page = products.run_weblog(cfg.paths.products_root, RUN).read_text()
    assert rec["weblog"] == str(products.run_weblog(cfg.paths.products_root, RUN))
    assert "verdict: <b>pass</b> by alice" in page and "DSA-017 &lt;noisy&gt;" in page
    night = weblog.render_night(cfg, DATE).read_text()
    assert "<td>pass</td>" in night


def test_later_verdict_keeps_report_and_defaults_analyst(cfg, capsys, tmp_path):
    fabricate_run(cfg)
    report = tmp_path / "r.txt"
    report.write_text("first look\n")
    assert cli(capsys, "qa", RUN, "--fail", "--report", str(report))[0] == 0
    code, out, _ = cli(capsys, "qa", RUN, "--null")
    assert code == 0 and f"{RUN}: QA null by {login_name()}" in out
    rec = db.qa(cfg.database_url, RUN)
    assert rec["state"] == "null" and rec["analyst"] == login_name() and rec["report"] == "first look\n"
    assert "verdict: <b>null</b>" in products.run_weblog(cfg.paths.products_root, RUN).read_text()


def test_bad_inputs_record_nothing(cfg, capsys, tmp_path):
    fabricate_run(cfg)
    code, _, err = cli(capsys, "qa", "20990101T000000-night-ffffff", "--pass")
    assert code == 1 and err.count("\n") == 1
    assert "unknown run id 20990101T000000-night-ffffff" in err and "contimg runs" in err
    code, _, err = cli(capsys, "qa", "run-7", "--pass")
    assert code == 1 and "is not a run id" in err
    missing = tmp_path / "missing.txt"
    code, _, err = cli(capsys, "qa", RUN, "--pass", "--report", str(missing))
    assert code == 1 and err == f"contimg: QA report {missing} does not exist; give the path of the report file " \
                                "to --report\n"
    assert db.qa(cfg.database_url, RUN) is None
    assert not products.run_file(cfg.paths.products_root, RUN, "qa_report.txt").exists()
    with pytest.raises(SystemExit) as e:
        cli(capsys, "qa", RUN, "--pass", "--fail")
    assert e.value.code == 2
    with pytest.raises(SystemExit):
        cli(capsys, "qa", RUN)  # a verdict is required
    assert db.qa(cfg.database_url, RUN) is None
