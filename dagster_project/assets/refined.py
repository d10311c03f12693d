"""`refined_documents`: schema-valid refined JSON per document, from the LLM chain or the
extractive refiner; only documents whose refinement key has no result, whose current
refinement a person rejected since, or whose result is a stand-in stored while the model was
unreachable, are sent."""

import dagster as dg

from ..core.feedback.events import feedback_versions
from ..core.openai_batch import BatchPolicy
from ..core.progress import Progress
from ..core.refine.pipeline import refine_collection
from ..pools import LLM_POOL
from ..project import Project
from ..resources.llm import LLMResource, prompt_token_counter
from ..resources.vector_store import PgVectorStore
from .corpus import ON_UPSTREAM_CHANGE, record_observed_version
from .reporting import ROW_COUNT_OF, collection_totals, partition_check
from .tables import OWNERS, table_metadata


def build_refined_documents(project: Project) -> dg.AssetsDefinition:
    @dg.asset(
        name="refined_documents", partitions_def=project.partitions, deps=[dg.AssetDep(name, partition_mapping=project.collection_of_shards())
                                                         for name in ("documents", "chunks")] + ["feedback_events"],
        group_name="refinement", code_version=project.refinement_version, kinds={"openai", "postgres", "python"},
        owners=OWNERS, metadata=table_metadata("refined_documents"), automation_condition=ON_UPSTREAM_CHANGE,
        pool=LLM_POOL,
        check_specs=[dg.AssetCheckSpec("every_document_refined", asset="refined_documents",
                                       partitions_def=project.partitions,
                                       description="Every document of the collection has refined JSON under the "
                                                   "current key (a stand-in awaiting the model does not count).")],
        description="Table refined_documents: JSON valid against RefinedDocument, with the model, link, "
                    "prompt and schema versions, input hash and cited chunks. Calls are logged in llm_calls; "
                    "answers that failed validation and refinements above the auto threshold are judged in "
                    "feedback_events. A refinement a person rejected is redone with their notes; one stored while "
                    "the model was unreachable is marked awaiting_model and sent again by the next run.",
    )
    def refined_documents(context: dg.AssetExecutionContext, vector_store: PgVectorStore,
                          llm: LLMResource) -> dg.MaterializeResult:
        store, chain, settings = vector_store.store, llm.chain, project.settings

        feedback_read = feedback_versions(store, [context.partition_key])[context.partition_key]
        report = refine_collection(
            store, context.partition_key, chain, prompt_token_counter(settings),
            budget=settings.refine_budget_tokens, thresholds=project.routing_thresholds,
            run_id=context.run_id, progress=Progress("documents refined", context.log.info),
            feedback=project.feedback_policy, best_of=project.manifest.collection(context.partition_key).best_of,
            batch=BatchPolicy(settings.llm_batch_min_documents, settings.llm_batch_poll_seconds,
                              settings.llm_batch_max_wait_seconds))
        for warning in report.warnings:
            context.log.warning(warning)
        record_observed_version(context, "feedback_events", feedback_read)
        outstanding = store.unrefined_count(context.partition_key, *project.refinement_key(chain))
        metadata = {
            "documents": report.documents, "refined": report.refined, "skipped": report.skipped,
            "lightweight": report.lightweight, "bypass_rate": round(report.bypass_rate, 3),
            "quarantined": report.quarantined, "awaiting_model": report.awaiting_model, "llm_calls": report.calls, "failed_calls": report.failed_calls,
            "prompt_tokens": report.prompt_tokens, "completion_tokens": report.completion_tokens,
            "cost_usd": dg.MetadataValue.float(round(report.cost_usd, 6)),
            # calls an earlier, stopped run sent and never logged, logged now (outcome 'lost')
            "lost_calls": report.lost_calls, "lost_cost_usd": dg.MetadataValue.float(float(round(report.lost_cost_usd, 6))),
            "seconds": round(report.seconds, 3),
            "by_link": dg.MetadataValue.json(dict(report.by_link)),
            "feedback_redos": report.feedback_redos,
            "batched": report.batched,
            "batches": dg.MetadataValue.json({"submitted": report.batches_submitted,
                                              "resumed": report.batches_resumed}),
            "best_of": report.best_of, "candidates": report.candidates,
            "candidates_discarded": report.candidates_discarded,
            "best_of_buffers": dg.MetadataValue.json({m: b.as_dict() for m, b in report.buffers.items()}),
            "judgements": dg.MetadataValue.json({s: report.judgements.get(s, 0) for s in ("validator", "auto")}),
            "lightweight_reasons": dg.MetadataValue.json(dict(report.lightweight_reasons)),
            "chain": " -> ".join(chain.links),
        }
        if report.warnings:
            metadata["warnings"] = dg.MetadataValue.md("\n".join(f"- {w}" for w in report.warnings))
        metadata.update(collection_totals(store, context.partition_key, ROW_COUNT_OF["refined_documents"]))
        return dg.MaterializeResult(metadata=metadata, check_results=[partition_check(
            context, "every_document_refined", outstanding == 0, {"documents_without_current_refinement": outstanding})])

    return refined_documents
