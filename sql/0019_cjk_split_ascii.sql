-- cjk_split() (sql/0013) cost a fifth of the chunks' generated tsvector on the PEPs, where 98%
-- of chunks are plain ASCII: not its regex but the call itself, since a SQL function with a
-- subquery is run by the SQL-function executor on every call instead of being inlined. It is
-- now a plain expression the planner inlines into the column's expression: a text whose
-- characters are all one byte holds no CJK and is returned as it is; any other text goes to the
-- former body, now cjk_split_runs(). Same result for every input (NULL included), so no stored
-- tsvector changes.
CREATE OR REPLACE FUNCTION cjk_split_runs(t text) RETURNS text
    LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
    RETURN CASE
        WHEN t !~ '[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]' THEN t
        ELSE (SELECT string_agg(CASE WHEN length(r.piece[1]) > 1 AND r.piece[1] ~ '^[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]'
                                     THEN (SELECT string_agg(substr(r.piece[1], i, 2), ' ' ORDER BY i)
                                           FROM generate_series(1, length(r.piece[1]) - 1) i)
                                     ELSE r.piece[1] END, ' ' ORDER BY r.n)
              FROM regexp_matches(t, '[\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+|[^\u1100-\u11ff\u3040-\u30ff\u3130-\u318f\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff66-\uff9f]+', 'g')
                   WITH ORDINALITY AS r(piece, n))
    END;

CREATE OR REPLACE FUNCTION cjk_split(t text) RETURNS text
    LANGUAGE sql IMMUTABLE PARALLEL SAFE
    RETURN CASE WHEN octet_length(t) = length(t) THEN t ELSE cjk_split_runs(t) END;
