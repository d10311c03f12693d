"""Tenants: a tenant's read role sees only its own collections' rows whatever SQL it runs (row
security, sql/0014_tenants.sql), cannot change any row, cannot become another tenant; the
operator's reader and the pipeline's writer are unaffected."""

from __future__ import annotations

import json
import os
import shutil

import psycopg
import pytest
import yaml
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from dagster_project.core.db.tenants import TenantError
from dagster_project.core.embed.local import HashEmbedder
from dagster_project.core.feedback.events import Feedback, record_feedback
from dagster_project.core.ingest.chunking import ChunkSettings
from dagster_project.core.ingest.corpus import load_manifest
from dagster_project.core.ingest.pipeline import ingest_collection
from dagster_project.core.ingest.tokens import wordpiece_counter
from dagster_project.core.refine.llm import LLMChain
from dagster_project.core.refine.pipeline import refine_collection
from dagster_project.core.refine.quality import RoutingThresholds
from tests.conftest import PROJECT_ROOT, refinery

TENANTS = {"product": "acme", "sales": "globex"}  # support: no tenant named, so `public`
ACME_APP = "refinery_test_acme_app"  # a login role an application of acme would use


def tenant_manifest(root) -> str:
    shutil.copytree(PROJECT_ROOT / "examples", root / "examples")
    path = root / "examples" / "corpus.yaml"
    manifest = yaml.safe_load(path.read_text())
    for name, tenant in TENANTS.items():
        manifest["collections"][name]["tenant"] = tenant
    path.write_text(yaml.safe_dump(manifest))
    return str(path)


@pytest.fixture
def tenanted(store, db_url, tmp_path):
    """The sample corpus with product owned by acme and sales by globex, ingested, refined and
    judged; both tenants have roles, and acme an application login role."""
    manifest = load_manifest(tenant_manifest(tmp_path))
    no_model = LLMChain(models=[], base_url=None, api_key=None, prices={})
    for collection in manifest.collections.values():
        ingest_collection(store, collection, embedder=HashEmbedder(), chunk_settings=ChunkSettings(),
                          max_file_bytes=10**7)
        refine_collection(store, collection.name, no_model, wordpiece_counter(), budget=8000,
                          thresholds=RoutingThresholds(), run_id="test")
    for collection in manifest.collections:
        with store.reading() as conn:
            path = conn.execute("SELECT path FROM documents WHERE collection = %s ORDER BY path LIMIT 1",
                                (collection,)).fetchone()[0]
        record_feedback(store, Feedback(rating=-1, collection=collection, path=path, comment="wrong"))
    for tenant in ("acme", "globex"):
        store.add_tenant(tenant)
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(f"DO $$ BEGIN CREATE ROLE {ACME_APP} LOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$")
        conn.execute(f"GRANT refinery_tenant_acme TO {ACME_APP}")
    return store


def connect_as(db_url: str, user: str) -> psycopg.Connection:
    params = conninfo_to_dict(db_url)
    params.pop("password", None)
    return psycopg.connect(make_conninfo(**{**params, "user": user}), autocommit=True)


TENANT_TABLES = ("documents", "chunks", "refined_documents", "feedback_events", "chunk_term_df")


def visible_collections(conn) -> dict[str, set[str]]:
    return {t: {r[0] for r in conn.execute(f"SELECT DISTINCT collection FROM {t}")} for t in TENANT_TABLES}


def test_a_tenant_login_reads_only_its_own_rows_whatever_sql_it_runs(tenanted, db_url):
    with connect_as(db_url, ACME_APP) as conn:
        assert conn.execute("SELECT current_user").fetchone()[0] == ACME_APP
        assert visible_collections(conn) == {t: {"product"} for t in TENANT_TABLES}
        # rows without a collection: vectors and postings of its own chunks' texts only
        assert conn.execute("SELECT count(*) FROM embeddings e WHERE NOT EXISTS (SELECT 1 FROM chunks c "
                            "WHERE c.content_hash = e.content_hash)").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM embeddings").fetchone()[0] > 0
        postings = conn.execute("SELECT count(*), count(*) FILTER (WHERE NOT EXISTS (SELECT 1 FROM chunks c "
                                "WHERE c.id = p.chunk_id)) FROM chunk_terms p").fetchone()
        assert postings[0] > 0 and postings[1] == 0
        # a word only the sales (globex) documents use has no posting and no frequency here
        assert conn.execute("SELECT count(*) FROM chunk_term_df WHERE term = 'discount'").fetchone()[0] == 0
        assert conn.execute("SELECT collection, tenant FROM collection_tenants").fetchall() == [("product", "acme")]
        assert conn.execute("SELECT name FROM tenants").fetchall() == [("acme",)]
        # a row named by its key is not there either
        assert conn.execute("SELECT count(*) FROM documents WHERE collection = 'sales'").fetchone()[0] == 0
        # the tables that do not serve search are not granted at all
        for table in ("api_tokens", "llm_calls", "ingestion_runs", "ingest_errors", "refine_quarantine"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SELECT count(*) FROM {table}")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM api_token_role('\\x00')")
        # a setting is not a boundary, and no other role can be taken
        conn.execute("SET refinery.tenant = 'globex'")
        assert visible_collections(conn)["documents"] == {"product"}
        for role in ("refinery_tenant_globex", "refinery_reader", "refinery_writer", "refinery_feedback", "postgres"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(f"SET ROLE {role}")
        conn.execute("SET ROLE refinery_tenant")  # the group its tenant role belongs to: it sees nothing at all
        assert visible_collections(conn) == {t: set() for t in TENANT_TABLES}


def test_a_tenant_cannot_change_or_add_rows_of_any_tenant(tenanted, db_url):
    statements = [
        "UPDATE documents SET title = 'owned' WHERE collection = 'sales'",
        "UPDATE documents SET title = 'owned'",
        "DELETE FROM chunks WHERE collection = 'sales'",
        "DELETE FROM embeddings",
        "DELETE FROM refined_documents",
        "TRUNCATE chunk_terms",
        "INSERT INTO collection_tenants (collection, tenant) VALUES ('sales', 'acme')",
        "UPDATE collection_tenants SET tenant = 'acme'",
        "INSERT INTO tenants (name, role) VALUES ('x', 'refinery_test_acme_app')",
        "INSERT INTO feedback_events (collection, path, rating) SELECT collection, path, 1 FROM documents LIMIT 1",
        ("INSERT INTO documents (id, collection, path, content_hash, size_bytes, format, title, embed_mode, blocks) "
         "VALUES (gen_random_uuid(), 'sales', 'x.md', '\\x00', 1, 'markdown', 'x', 'full', '[]')"),
    ]
    with connect_as(db_url, ACME_APP) as conn:
        for statement in statements:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)
    # Row security also holds if a write grant is ever added: no policy lets a tenant write.
    with psycopg.connect(db_url) as conn:
        conn.execute("GRANT UPDATE ON documents TO refinery_tenant")
        conn.execute("GRANT DELETE ON refined_documents TO refinery_tenant")
        conn.execute("SET LOCAL ROLE refinery_tenant_acme")
        assert conn.execute("UPDATE documents SET title = 'owned' WHERE collection = 'sales'").rowcount == 0
        assert conn.execute("DELETE FROM refined_documents").rowcount == 0
        conn.rollback()
    with tenanted.reading() as conn:
        assert conn.execute("SELECT count(*) FROM documents WHERE title = 'owned'").fetchone()[0] == 0
        assert conn.execute("SELECT count(DISTINCT collection) FROM documents").fetchone()[0] == 3


def test_search_as_a_tenant_returns_only_its_collections_in_every_mode(tenanted):
    embedder = HashEmbedder()
    model_id = tenanted.model_id(embedder.model)
    query = "enterprise discounts on pricing plans"
    vector = embedder.embed([query]).vectors[0]
    for mode in ("vector", "text", "hybrid"):
        everyone = tenanted.search(model_id, embedder.model.dims, vector, k=20, mode=mode, query_text=query)
        assert "sales" in {h.collection for h in everyone}, mode  # the operator's reader sees every tenant
        for tenant, collection in (("acme", "product"), ("globex", "sales")):
            hits = tenanted.search(model_id, embedder.model.dims, vector, k=20, mode=mode, query_text=query,
                                   tenant=tenant)
            assert hits and {h.collection for h in hits} == {collection}, (mode, tenant)
        # a filter cannot reach past the tenant
        assert tenanted.search(model_id, embedder.model.dims, vector, k=5, mode=mode, query_text=query,
                               filters={"collection": "sales"}, tenant="acme") == []
    with pytest.raises(TenantError, match="refinery tenant add nobody"):
        tenanted.search(model_id, embedder.model.dims, vector, mode="hybrid", query_text=query, tenant="nobody")


def test_moving_a_collection_to_another_tenant_moves_its_rows_at_once(tenanted, db_url):
    tenanted.assign_tenant("sales", "acme")
    with connect_as(db_url, ACME_APP) as conn:
        assert visible_collections(conn)["documents"] == {"product", "sales"}
    with tenanted.reading(tenant="globex") as conn:
        assert conn.execute("SELECT count(*) FROM documents").fetchone()[0] == 0


def test_cli_search_takes_a_tenant(project_env, tmp_path):
    env = {**os.environ, "CORPUS_MANIFEST": tenant_manifest(tmp_path / "t")}
    assert refinery(env, "ingest").returncode == 0
    done = refinery(env, "search", "pricing discounts", "--tenant", "globex")
    assert done.returncode == 2 and "refinery tenant add globex" in done.stderr
    assert refinery(env, "tenant", "add", "globex").returncode == 0
    done = refinery(env, "search", "pricing discounts", "--tenant", "globex", "--json", "--k", "10")
    assert done.returncode == 0, done.stderr
    assert {h["collection"] for h in json.loads(done.stdout)} == {"sales"}
    listed = refinery(env, "tenant", "list", "--json")
    assert json.loads(listed.stdout)["globex"]["collections"] == ["sales"]
    # A token for a tenant that nothing names (a typo) is refused: it would see nothing.
    done = refinery(env, "token", "create", "--tenant", "globx")
    assert done.returncode == 2 and "no tenant 'globx'" in done.stderr and "globex" in done.stderr
    assert "globx" not in json.loads(refinery(env, "tenant", "list", "--json").stdout)
    assert refinery(env, "token", "create", "--tenant", "acme").returncode == 0  # named by the manifest


def test_the_manifest_names_a_tenant_and_leaves_collections_without_one_as_they_were(tmp_path):
    from dagster_project.core.ingest.corpus import Collection, ManifestError

    plain = Collection(name="kb", root=tmp_path)
    assert plain.tenant == "public"
    assert "tenant" not in plain.fingerprint()  # data versions of manifests written before tenants are kept
    assert Collection(name="kb", root=tmp_path, tenant="acme").fingerprint() != plain.fingerprint()
    (tmp_path / "docs").mkdir()
    (tmp_path / "corpus.yaml").write_text("collections:\n  kb: {root: docs, tenant: Acme Corp}\n")
    with pytest.raises(ManifestError, match="tenant 'Acme Corp' may only use 1-40 lower-case letters"):
        load_manifest(tmp_path / "corpus.yaml")


def test_every_table_holding_a_collections_rows_has_row_security(store):
    # A table added later without row security would be open to every tenant once granted.
    with store.reading() as conn:
        open_tables = [r[0] for r in conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attname = 'collection' AND NOT a.attisdropped"
            " WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND NOT c.relrowsecurity ORDER BY 1")]
    assert open_tables == []
