"""The run launcher of `refinery dev`'s instance: Dagster's default one (each run in a worker
process of the code server), which also tags each run with the process that launched it."""

from __future__ import annotations

from dagster._core.launcher import DefaultRunLauncher, LaunchRunContext


class RefineryRunLauncher(DefaultRunLauncher):
    """Tags each run, before its worker starts, with the launching process (the daemon's
    `refinery/launcher`): a run left in progress when `refinery dev` died, even in the second
    before its first step tags it with its worker (`pools.tag_run_worker`), can then be proven
    dead by a later `refinery` (`pools.release_dead_runs`) instead of holding its collection's
    place in the run queue for good."""

    def launch_run(self, context: LaunchRunContext) -> None:
        from .pools import launcher_tags

        self._instance.add_run_tags(context.dagster_run.run_id, launcher_tags())
        super().launch_run(context)
