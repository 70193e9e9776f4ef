"""Progress in a log file: plain lines with count, rate and time left (tqdm prints nothing there)."""

import io

from subspaces.progress import LogProgress, progress_bar


def test_log_lines_give_count_rate_and_eta():
    out = io.StringIO()
    bar = LogProgress(total=10, desc="extract", unit="utt", every_s=0.0, file=out)
    bar.update(4)
    bar.set_postfix_str("70x real time")
    bar.update(6)
    bar.close()
    bar.close()  # a second close prints nothing more
    lines = out.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].startswith("[extract] 4/10 utt, ") and "ETA" in lines[0]
    assert lines[1].startswith("[extract] 10/10 utt, ") and "ETA" not in lines[1] and "70x real time" in lines[1]
    assert lines[2].endswith("(done)")


def test_lines_are_rate_limited_and_iteration_closes():
    out = io.StringIO()
    items = list(LogProgress(range(1000), desc="synthesising", unit="text", every_s=3600.0, file=out))
    assert items == list(range(1000))
    assert out.getvalue().splitlines() == [line for line in out.getvalue().splitlines() if "(done)" in line]
    assert out.getvalue().startswith("[synthesising] 1000/1000 text")


def test_progress_bar_writes_lines_when_stderr_is_not_a_terminal(capsys, monkeypatch):
    import sys

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    bar = progress_bar(total=2, desc="train", unit="step")
    assert isinstance(bar, LogProgress)
    bar.update(2)
    bar.close()
    assert "[train] 2/2 step" in capsys.readouterr().err
    quiet = progress_bar(total=2, desc="train", enabled=False)
    quiet.update(2)
    quiet.close()
    assert capsys.readouterr().err == ""
