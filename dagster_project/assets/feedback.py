"""`feedback_events`, the append-only feedback log observed as a source (people, applications and
the pipeline write to it), and `feedback_views`, the views and functions over it."""

import dagster as dg

from ..core.feedback.events import (
    example_counts,
    feedback_summary,
    feedback_versions,
    refiner_stats,
)
from ..project import Project
from ..resources.vector_store import PgVectorStore
from .corpus import observe_on, observed_collections
from .reporting import markdown_table
from .tables import OWNERS, kind_tags, table_metadata

# The views live in versioned SQL (migrations run when the store opens); a change is a new file.
FEEDBACK_VIEWS_SQL = "0008_feedback_views"


def build_feedback_events(project: Project) -> dg.SourceAsset:
    @dg.observable_source_asset(
        name="feedback_events", partitions_def=project.partitions, group_name="feedback",
        tags=kind_tags("postgres", "python"), metadata=table_metadata("feedback_events"),
        required_resource_keys={"vector_store"},
        description="Table feedback_events: judgements of refined documents and search hits by people "
                    "(refinery feedback add, or applications as the refinery_feedback role) and by the "
                    "pipeline (validator, auto). Data version per collection: newest id and count of the "
                    "judgements from people and applications. Observed by the automation sensor on "
                    "FEEDBACK_OBSERVE_CRON.",
        automation_condition=observe_on(project.settings.feedback_observe_cron),
    )
    def feedback_events(context) -> dg.DataVersionsByPartition:
        versions = feedback_versions(context.resources.vector_store.store, observed_collections(context, project))
        return dg.DataVersionsByPartition({name: dg.DataVersion(v) for name, v in versions.items()})

    return feedback_events


def build_feedback_views(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="feedback_views", deps=["feedback_events", "refined_documents"], group_name="feedback",
        code_version=FEEDBACK_VIEWS_SQL, kinds={"postgres", "python"}, owners=OWNERS,
        description="Views feedback_positive_examples, feedback_negative_examples, feedback_summary "
                    "(per model and prompt version: counts, approval rate, frequent tags) and functions "
                    "feedback_training_examples(max_examples, min_rating) and get_refiner_stats(), "
                    f"defined in sql/{FEEDBACK_VIEWS_SQL}.sql. Materializing reports what they hold.",
    )
    def feedback_views(context: dg.AssetExecutionContext, vector_store: PgVectorStore) -> dg.MaterializeResult:
        store = vector_store.store
        summary = feedback_summary(store)
        stats = refiner_stats(store)
        for row in summary:
            row["frequent_tags"] = ", ".join(f"{t['tag']} ({t['count']})" for t in row["frequent_tags"])
        return dg.MaterializeResult(metadata={
            **{name: dg.MetadataValue.int(n) for name, n in example_counts(store).items()},
            "feedback_events": dg.MetadataValue.int(sum(row["events"] for row in summary)),
            "summary": markdown_table(summary, ["model", "prompt_version", "events", "positive", "negative",
                                                "approval_rate", "user_approval_rate", "validator_rejections",
                                                "auto_approvals", "frequent_tags"]),
            "refiner_stats": markdown_table(stats, ["source", "model", "link", "outcome", "calls", "documents",
                                                    "prompt_tokens", "completion_tokens", "cost_usd"]),
        })

    return feedback_views
