"""Hybrid search over the store: the vector leg (HNSW or exact cosine), the BM25 text leg, and
their reciprocal rank fusion per document, each as one SQL statement."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..db.embeddings import vector_type

# A filter that leaves at most this many chunks is searched exactly: scanning a few thousand
# vectors takes a few milliseconds and is exact, where the HNSW graph would be walked far
# (iterative scan) to find k rows that pass the filter.
EXACT_SEARCH_MAX_ROWS = 10_000
SEARCH_MODES = ("hybrid", "vector", "text")
# Hybrid fusion is per document: a document's score in a leg is 1 / (K + its rank among the
# leg's documents) for its best chunk, plus 1 / (K + chunk rank) for each further chunk, each
# counting this much less than the one before (so a document with several good passages rises,
# but twenty weak ones do not beat one strong one); its fused score adds up both legs.
# The best chunk counts at its document's rank: at its chunk rank, a page that a leg ranks second
# among documents counted as 11th behind a long page holding the ten chunks above it.
# K is 10, not the usual 60: a leg's 50 chunks hold some 20 to 40 documents, and at K = 60 a
# document both legs rank 15th outscored the first document of either leg alone.
RRF_K = 10
RRF_DEPTH = 50  # hits taken from each leg before fusing
RRF_SAME_DOCUMENT_DECAY = 0.3
RRF_LEG_WEIGHTS = {"vector": 1.0, "text": 1.0, "card": 1.0}  # each leg's share of a document's fused score
# Hybrid's third leg ranks documents by their card alone (the chunk of what their metadata says
# of them: description, summary...; pipeline.document_card): the cards among the vector leg's
# chunks, ranked among themselves, the first few counted. A reference page whose body is code or
# markup says what it does in its card in the words a question uses, and ranked among cards only
# it is not outnumbered by long pages' passages: on the Hugo set the answer's card was 2nd or 3rd
# among cards where its page was 7th to 19th in the vector leg (docs/architecture.md). It reads
# nothing more than the vector leg did; a corpus without cards (the PEPs) ranks as before.
RRF_CARD_DEPTH = 5
# A document that holds many times more chunks than the average document (a changelog, an
# all-in-one reference) has that many more chances for one of its chunks to land near any
# question in either leg, and won questions that a focused page answers: FastAPI's 700 KB release
# notes (2,035 chunks against 28 on average) ranked above the answer in 6 of the 11 questions
# hybrid did not answer first. Its fused score is scaled by sqrt(OUTSIZED * average / its chunks)
# once it holds more than OUTSIZED times the average: FastAPI MRR@10 0.838 -> 0.874, Hugo and the
# PEPs unchanged (docs/architecture.md). The average is over every collection, from the planner's
# row counts of the two tables (none before they were first analyzed: no scaling then).
OUTSIZED_DOCUMENT_CHUNKS = 10
# Unfiltered text search reads at most this many postings per query term, best BM25 weight first
# (a term found in more chunks than that contributes little: its idf is low). Filtered text
# search reads every posting of its terms, so a narrow filter never loses its matches.
BM25_POSTINGS_PER_TERM = 3000
FILTER_COLUMNS = ("collection", "category", "doc_type", "status")
REPEATED_TEXT_ONCE = True  # see search_sql
# A search that finds fewer than k documents (one long page whose every section is near the
# question held 46 of the vector leg's 50 chunks on the PEPs, and all 50 of the text leg's for
# "async await coroutine") runs again once, each leg reading this many times its depth and adding
# the best chunk of each further document until it holds k: the chunks within the depth, their
# ranks and so every fused score stay as they were; the added documents rank after them. Not on
# every search: the deeper HNSW walk doubled the vector leg's time (PEP p50 5.1 -> 10.1 ms).
DOCUMENT_POOL_FACTOR = 4

# BM25 (sql/0006_bm25.sql): idf from the per-collection document frequencies (N from the
# planner's row count, exact for small tables), then the sum of idf * weight over the query's
# terms (in search_sql), in single precision (a tenth faster over ten thousand postings).
BM25_STATS = (
    # The query's lexemes in every collection's text search configuration (sql/0013), CJK split as the chunks are.
    "WITH terms AS (SELECT DISTINCT unnest(tsvector_to_array(to_tsvector(cfg, cjk_split(%(text)s)))) AS term"
    "   FROM (SELECT %(cfg)s::regconfig AS cfg UNION SELECT ts_config FROM collection_text_search) configs),"
    " n AS (SELECT CASE WHEN reltuples > 0 THEN reltuples ELSE (SELECT count(*) FROM chunks) END AS n"
    "       FROM pg_class WHERE oid = 'chunks'::regclass),"
    " stats AS MATERIALIZED (SELECT t.term, ln(1 + (greatest(n.n, df.df) - df.df + 0.5) / (df.df + 0.5))::real AS idf"
    "   FROM terms t CROSS JOIN n CROSS JOIN LATERAL"
    "   (SELECT sum(f.df)::float8 AS df FROM chunk_term_df f WHERE f.term = t.term) df WHERE df.df > 0)"
)


@dataclass
class SearchHit:
    collection: str
    path: str
    title: str
    heading_path: list[str]
    text: str
    score: float
    chunk_id: str
    # leg -> rank at which it found this chunk: vector, text, and card (hybrid: the chunk is its
    # document's card, at this rank among the cards of the vector leg)
    legs: dict[str, int] = field(default_factory=dict)
    pages: tuple[int, int] | None = None  # first and last page (slide, for PowerPoint) of the text
    format: str = ""

    @property
    def locator(self) -> str:
        """Where in the file the text is: "page 3", "pages 3-4", "slide 2" ("" without pages)."""
        if self.pages is None:
            return ""
        unit = "slide" if self.format == "pptx" else "page"
        first, last = self.pages
        return f"{unit} {first}" if first == last else f"{unit}s {first}-{last}"


@dataclass
class DocumentResult:
    """A document found by a search, with its best passages (best first)."""

    collection: str
    path: str
    title: str
    score: float  # hybrid: the fused score; vector / text: the score of its best passage
    passages: list[SearchHit]


class SearchQueries:
    """Search over the store's chunks (a part of `VectorStore`)."""

    def search(self, model_id: int | None, dims: int, query: np.ndarray | None, k: int = 5,
               filters: dict[str, str] | None = None, ef_search: int = 100, *, mode: str = "vector",
               query_text: str = "", text_search_config: str = "english",
               tenant: str | None = None) -> list[SearchHit]:
        """The k best chunks for a query, optionally filtered on document metadata.

        mode `vector`: cosine similarity (score = similarity). Unfiltered or broad filters use the
        model's HNSW index with pgvector's iterative scan, which keeps going until k rows pass the
        filter; a filter that leaves few rows (found by a bounded probe) gets an exact scan.
        mode `text`: BM25 over the lexemes of the chunks' tsvector (score = BM25).
        mode `hybrid`: both legs fused by reciprocal rank fusion per document, in one statement
        (score = the document's fused score). The best chunk of each document comes first, in
        document order; further chunks of the same documents follow. Every hit says at which
        rank each leg found it. `search_documents` gives documents with their passages.

        With a tenant, the statement runs as the tenant's read role: row security leaves only its
        collections' rows (and their vectors and postings) in every leg."""
        rows = self._run_search(model_id, dims, query, k, filters, ef_search, mode, query_text,
                                text_search_config, tenant, passages=None)
        return [self._hit(r) for r in rows]

    def search_documents(self, model_id: int | None, dims: int, query: np.ndarray | None, k: int = 5,
                         filters: dict[str, str] | None = None, ef_search: int = 100, *, mode: str = "hybrid",
                         query_text: str = "", text_search_config: str = "english",
                         tenant: str | None = None, passages: int = 3) -> list[DocumentResult]:
        """The k best documents in any mode, each with up to `passages` of its best chunks: one
        long page cannot fill the list with its chunks. Documents rank by their fused score
        (hybrid) or by their best chunk (vector, text)."""
        if passages < 1:
            raise ValueError(f"passages must be at least 1, not {passages}")
        rows = self._run_search(model_id, dims, query, k, filters, ef_search, mode, query_text,
                                text_search_config, tenant, passages=passages)
        documents: dict[tuple[str, str], DocumentResult] = {}
        for r in rows:
            key = (r[0], r[1])
            if key not in documents:
                documents[key] = DocumentResult(r[0], r[1], r[2], float(r[9]), [])
            documents[key].passages.append(self._hit(r))
        return list(documents.values())

    @staticmethod
    def _hit(r) -> SearchHit:
        return SearchHit(r[0], r[1], r[2], list(r[3]), r[4], float(r[6]), str(r[5]),
                         {leg: rank for leg, rank in (("vector", r[7]), ("text", r[8]), ("card", r[13])) if rank is not None},
                         (r[10], r[11]) if r[10] is not None else None, r[12])

    def _run_search(self, model_id, dims, query, k, filters, ef_search, mode, query_text, text_search_config,
                    tenant, passages: int | None) -> list[tuple]:
        if mode not in SEARCH_MODES:
            raise ValueError(f"unknown search mode {mode!r}: use one of {', '.join(SEARCH_MODES)}")
        where, params = self._search_filters(filters)
        params.update(q=query, text=query_text, cfg=text_search_config)
        with self.reading(tenant) as conn:
            exact = False
            if mode != "text" and where:
                probe = conn.execute(
                    "SELECT count(*) FROM (SELECT 1 FROM chunks c JOIN documents d ON d.id = c.document_id "
                    f"WHERE {' AND '.join(where)} LIMIT {EXACT_SEARCH_MAX_ROWS + 1}) x", params).fetchone()[0]
                exact = probe <= EXACT_SEARCH_MAX_ROWS
            with conn.pipeline():  # the settings and the query travel together: one round trip
                # Prepared after a few runs (psycopg); its generic plan is as good as a custom one
                # (see search_sql), so skip the planning.
                conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                if mode != "text" and not exact:
                    conn.execute("SET LOCAL hnsw.iterative_scan = relaxed_order")
                    conn.execute(f"SET LOCAL hnsw.ef_search = {int(ef_search)}")
                cursor = conn.execute(self.search_sql(dims, where, exact, mode, model_id=model_id, k=k,
                                                      passages=passages), params)
            rows = cursor.fetchall()
            found = len({(r[0], r[1]) for r in rows}) if passages is not None else len(rows)
            if found < k and DOCUMENT_POOL_FACTOR > 1:  # see DOCUMENT_POOL_FACTOR
                rows = conn.execute(self.search_sql(dims, where, exact, mode, model_id=model_id, k=k, passages=passages,
                                                    pool_factor=DOCUMENT_POOL_FACTOR), params).fetchall()
            return rows

    @staticmethod
    def _search_filters(filters: dict[str, str] | None) -> tuple[list[str], dict]:
        where, params = [], {}
        for column, value in (filters or {}).items():
            if column not in FILTER_COLUMNS:
                raise ValueError(f"unknown filter {column!r}: use one of {', '.join(FILTER_COLUMNS)}")
            if value is not None:
                where.append(f"d.{column} = %({column})s")
                params[column] = value
        return where, params

    def search_sql(self, dims: int, where: list[str], exact: bool, mode: str = "vector", *,
                   model_id: int | None, k: int, passages: int | None = None, pool_factor: int = 1) -> str:
        """One statement per mode; columns: collection, path, title, heading_path, text, chunk id,
        score, vector rank, text rank, document score, first and last page, format, card rank.
        `passages` set: the k best documents, each with at most that many chunks; else the k best
        chunks. `pool_factor` above 1: each leg reads that many times its depth for documents
        beyond it (DOCUMENT_POOL_FACTOR). The model, k and the fusion constants are literals, the query
        and the filter values parameters, so the generic plan of the prepared statement is the
        custom plan (a parameter for the model would hide the model's partial HNSW index from it):
        a search is not planned afresh each time, which cost 1.2 ms of a hybrid search."""
        model, k = int(model_id or 0), int(k)
        # Per document, a leg must reach past the k best chunks to find k documents; and past the
        # copies of a repeated text (counted once) to find k chunks.
        depth = max(RRF_DEPTH, k) if mode == "hybrid" else max(RRF_DEPTH, 2 * k)
        vtype, _ = vector_type(dims)
        distance = f"(e.embedding::{vtype}) <=> %(q)s::{vtype}"
        order = f"({distance}) + 0" if exact else distance  # "+ 0": keep the planner off the index
        filters = "".join(f" AND {w}" for w in where)
        pool = depth * int(pool_factor)

        def within_depth(ranked: str, key: str) -> str:
            """The leg's rows from `ranked` (its pool of chunks: id, document_id, text, score...,
            best first by `key`): a text repeated across documents (an included snippet, a
            generated block) counts once, where it ranks best, as its copies would push other
            documents out of the depth; the chunks within the depth, then the best chunk of each
            further document of the pool until the leg holds k documents. Adds `rank`."""
            once = "WHERE r.copy = 1" if REPEATED_TEXT_ONCE else ""
            return (
                f"SELECT r.*, row_number() OVER (ORDER BY {key}, r.id) AS rank FROM ("
                " SELECT r.*, CASE WHEN r.nth = 1 THEN row_number() OVER (PARTITION BY r.nth = 1"
                f"  ORDER BY {key}, r.id) END AS document FROM ("
                f"  SELECT r.*, row_number() OVER (PARTITION BY r.document_id ORDER BY {key}, r.id) AS nth FROM ("
                f"   SELECT r.*, row_number() OVER (ORDER BY {key}, r.id) AS position,"
                f"    row_number() OVER (PARTITION BY md5(r.text) ORDER BY {key}, r.id) AS copy FROM ({ranked}) r) r {once}) r) r"
                f" WHERE r.position <= {depth} OR r.document <= {k}")
        vector_leg = (
            "SELECT r.id, r.document_id, r.rank, 1 - r.distance AS score, r.card FROM ("
            + within_depth(f"SELECT c.id, c.document_id, c.text, c.card, {distance} AS distance"
                           "   FROM embeddings e JOIN chunks c ON c.content_hash = e.content_hash"
                           "   JOIN documents d ON d.id = c.document_id"
                           f"  WHERE e.model_id = {model}{filters} ORDER BY {order} LIMIT {pool}", "r.distance")
            + ") r")
        if where:
            postings = ("stats s JOIN chunk_terms p ON p.term = s.term JOIN chunks c ON c.id = p.chunk_id"
                        f" JOIN documents d ON d.id = c.document_id WHERE {' AND '.join(where)}")
        else:
            postings = ("stats s CROSS JOIN LATERAL (SELECT p.chunk_id, p.weight FROM chunk_terms p"
                        f" WHERE p.term = s.term ORDER BY p.weight DESC LIMIT {BM25_POSTINGS_PER_TERM}) p")
        text_leg = (
            "SELECT r.id, r.document_id, r.rank, r.score FROM ("
            + within_depth(f"SELECT t.*, c.document_id, c.text FROM ("
                           f"  {BM25_STATS} SELECT p.chunk_id AS id, sum(p.weight * s.idf) AS score FROM {postings}"
                           f"   GROUP BY p.chunk_id ORDER BY score DESC, p.chunk_id LIMIT {pool}"
                           ") t JOIN chunks c ON c.id = t.id", "r.score DESC")
            + ") r")
        # One leg alone ranks documents by their best chunk: scored like hybrid's legs, a page's
        # further chunks cost the Hugo set text MRR@10 0.550 -> 0.534 (docs/architecture.md).
        per_document = ("row_number() OVER (PARTITION BY document_id ORDER BY rank) AS nth,"
                        " max(score) OVER (PARTITION BY document_id) AS score, score AS chunk_score")
        if mode == "vector":
            legs = (f"SELECT id, document_id, {per_document}, rank AS vector_rank, NULL::bigint AS text_rank,"
                    f" NULL::bigint AS card_rank FROM ({vector_leg}) x")
        elif mode == "text":
            legs = (f"SELECT id, document_id, {per_document}, NULL::bigint AS vector_rank, rank AS text_rank,"
                    f" NULL::bigint AS card_rank FROM ({text_leg}) x")
        else:
            legs = (
                f"WITH v AS ({vector_leg}),"
                " legs AS (SELECT id, document_id, rank, 'v' AS leg FROM v"
                f"              UNION ALL SELECT id, document_id, rank, 't' FROM ({text_leg}) t"
                "              UNION ALL SELECT id, document_id, rank, 'c' FROM (SELECT id, document_id,"
                f"              row_number() OVER (ORDER BY rank) AS rank FROM v WHERE card) k WHERE rank <= {int(RRF_CARD_DEPTH)}),"
                # nth: the chunk's place in its document, in its leg; drank: the document's rank
                # among the leg's documents, on its best chunk's row (see RRF_K)
                " per AS (SELECT p.*, CASE WHEN nth = 1 THEN row_number() OVER"
                "         (PARTITION BY leg, nth = 1 ORDER BY rank) END AS drank FROM (SELECT l.*, row_number()"
                "         OVER (PARTITION BY l.leg, l.document_id ORDER BY l.rank) AS nth FROM legs l) p),"
                f" docs AS (SELECT document_id, sum(CASE leg WHEN 'v' THEN {float(RRF_LEG_WEIGHTS['vector'])}"
                f"         WHEN 'c' THEN {float(RRF_LEG_WEIGHTS['card'])} ELSE {float(RRF_LEG_WEIGHTS['text'])} END"
                f"         * power({float(RRF_SAME_DOCUMENT_DECAY)}, nth - 1)"
                f"         / ({int(RRF_K)} + CASE WHEN nth = 1 THEN drank ELSE rank END)) AS score"
                "          FROM per GROUP BY document_id),"
                # max(ordinal) + 1: the chunk count, from one probe of the (document_id, ordinal) index
                f" sized AS MATERIALIZED (SELECT d.document_id, d.score * least(1.0, sqrt({int(OUTSIZED_DOCUMENT_CHUNKS)} * avg.chunks"
                "          / (SELECT max(c.ordinal) + 1 FROM chunks c WHERE c.document_id = d.document_id))) AS score"
                "          FROM docs d CROSS JOIN (SELECT CASE WHEN c.reltuples > 0 AND d.reltuples > 0 THEN c.reltuples / d.reltuples END AS chunks"
                "          FROM pg_class c, pg_class d WHERE c.oid = 'chunks'::regclass AND d.oid = 'documents'::regclass) avg),"
                " fused AS (SELECT p.id, p.document_id, max(sized.score) AS score,"
                # the card leg ranks documents, not passages: it leaves a card the passage shown last
                f"           coalesce(sum(1.0 / ({int(RRF_K)} + p.rank)) FILTER (WHERE p.leg <> 'c'), 0) AS chunk_score,"
                "           max(p.rank) FILTER (WHERE p.leg = 'v') AS vector_rank,"
                "           max(p.rank) FILTER (WHERE p.leg = 't') AS text_rank,"
                "           max(p.rank) FILTER (WHERE p.leg = 'c') AS card_rank"
                "           FROM per p JOIN sized USING (document_id) GROUP BY p.id, p.document_id)"
                # every document's best chunk first, then the second-best ones...: k hits show the
                # k best documents, not one document's k passages
                " SELECT id, document_id, row_number() OVER (PARTITION BY document_id ORDER BY chunk_score DESC, id) AS nth,"
                "        score, chunk_score, vector_rank, text_rank, card_rank FROM fused")
        if passages is not None:
            top = ("SELECT * FROM (SELECT hits.*, dense_rank() OVER (ORDER BY score DESC, document_id) AS doc_rank"
                   f" FROM hits) x WHERE doc_rank <= {k} AND nth <= {int(passages)}")
            order = "doc_rank, nth"
        else:
            order = "nth, score DESC, chunk_score DESC, id" if mode == "hybrid" else "chunk_score DESC, id"
            top = f"SELECT * FROM hits ORDER BY {order} LIMIT {k}"
        hit_score = "h.score" if mode == "hybrid" else "h.chunk_score"  # hybrid: the document's fused score
        return (f"WITH hits AS MATERIALIZED ({legs}),"
                f" top AS MATERIALIZED ({top}) "  # text of the hits returned only
                f"SELECT d.collection, d.path, d.title, c.heading_path, c.text, c.id, {hit_score}, h.vector_rank, "
                "h.text_rank, h.score, c.first_page, c.last_page, d.format, h.card_rank FROM top h JOIN chunks c ON c.id = h.id "
                "JOIN documents d ON d.id = c.document_id "
                f"ORDER BY {', '.join('h.' + o for o in order.split(', '))}")
