"""Progress lines: a steady cadence whatever the batch size, with rate and ETA, and the end
always reported."""

from dagster_project.core.progress import Progress


def test_progress_reports_at_a_steady_cadence_with_rate_and_eta():
    now = [0.0]
    lines: list[str] = []
    progress = Progress("texts embedded", lines.append, every=10.0, clock=lambda: now[0])
    for done in range(100, 1001, 100):  # a batch every 2 s
        now[0] += 2.0
        progress(done, 1000)
    assert lines == [
        "texts embedded: 100/1000 (10%), 50.0/s, ETA 18s",  # the first batch is always reported
        "texts embedded: 600/1000 (60%), 50.0/s, ETA 8s",   # then at most once per 10 s
        "texts embedded: 1000/1000 (100%) in 20s, 50.0/s",  # and always at the end
    ]


def test_progress_of_nothing_to_do_is_one_line():
    lines: list[str] = []
    Progress("documents refined", lines.append, clock=lambda: 5.0)(0, 0)
    assert lines == ["documents refined: 0/0 in 0s, 0.0/s"]
