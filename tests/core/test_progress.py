"""Progress lines: a steady cadence whatever the batch size, with rate and ETA, and the end
always reported; on a terminal one bar redrawn in place, elsewhere plain lines."""

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


class _Stream:
    def __init__(self):
        self.text = ""

    def write(self, text):
        self.text += text

    def flush(self):
        pass

    def isatty(self):
        return False


def _run(display, now):
    from dagster_project.core.progress import watching

    progress = Progress("texts embedded", lambda line: None, clock=lambda: now[0])
    with watching(display):
        for done in range(100, 1001, 100):  # a batch every 0.25 s
            now[0] += 0.25
            progress(done, 1000)
    progress(1000, 1000)  # outside `watching`: not shown


def test_display_on_a_terminal_redraws_one_bar_in_place_and_ends_it():
    from dagster_project.core.progress import ProgressDisplay

    now, stream = [0.0], _Stream()
    display = ProgressDisplay(stream, tty=True, redraw=0.5, clock=lambda: now[0])
    display.label = "support"
    _run(display, now)
    frames = stream.text.split("\r")[1:]
    assert len(frames) == 6  # the first, then at most one per 0.5 s, and the end
    assert frames[0].startswith("[##......................] support: texts embedded: 100/1000 (10%)")
    assert frames[-1].startswith("[########################] support: texts embedded: 1000/1000 (100%) in 2s")
    assert all(f.endswith("\x1b[K") for f in frames[:-1]) and frames[-1].endswith("\x1b[K\n")
    display.close()  # the bar is already ended: nothing more
    assert stream.text.count("\n") == 1


def test_display_elsewhere_writes_plain_lines_at_a_steady_cadence():
    from dagster_project.core.progress import ProgressDisplay

    now, stream = [0.0], _Stream()
    _run(ProgressDisplay(stream, every=10.0, clock=lambda: now[0]), now)
    assert stream.text.splitlines() == ["texts embedded: 100/1000 (10%), 400.0/s, ETA 2s",
                                        "texts embedded: 1000/1000 (100%) in 2s, 400.0/s"]
    assert "\r" not in stream.text
