"""reST parity on ../shared/corpora/peps: rst.py (what ingest uses) against docutils' parser read
the way ingest read it until parsers-v4. Prints, per measure, how many PEPs come out the same, and
the time of each parser on one core; `--show NAME` prints one PEP's differing blocks."""

from __future__ import annotations

import argparse
import copy
import difflib
import re
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PEPS, print_table  # noqa: E402
from dagster_project.core.db.chunks import DocumentToChunk  # noqa: E402
from dagster_project.core.embed.local import HashEmbedder  # noqa: E402
from dagster_project.core.ingest.chunking import ChunkSettings  # noqa: E402
from dagster_project.core.ingest.parsing import Block, ParsedDocument, _split_header_block, parse_document  # noqa: E402
from dagster_project.core.ingest.pipeline import build_chunks  # noqa: E402
from dagster_project.core.ingest.rst import _role_text  # noqa: E402

# docutils leaves a role it does not know (Sphinx's :func:, :ref:...) as its source text, and
# reads :pep:`text <8>` as source too; rst.py reads them as their text, on purpose.
_ROLE = re.compile(r":([\w.+:-]+):`([^`]*)`")


def read_roles(text: str) -> str:
    return _ROLE.sub(lambda m: _role_text(m[1], m[2]), text)


def docutils_document(text: str) -> ParsedDocument:
    """The docutils reading as parsers-v3 did it: parse only (no transforms), system messages
    removed, one block per paragraph, literal block, list, table or quote."""
    from docutils import nodes
    from docutils.frontend import get_default_settings
    from docutils.parsers.rst import Parser
    from docutils.utils import new_document

    settings = get_default_settings(Parser)
    for key, value in {"report_level": 5, "halt_level": 5, "warning_stream": False, "file_insertion_enabled": False,
                       "raw_enabled": False, "input_encoding": "unicode", "doctitle_xform": False,
                       "line_length_limit": sys.maxsize}.items():
        setattr(settings, key, value)
    metadata, body = _split_header_block(text)
    document = new_document("<rst>", copy.copy(settings))
    Parser().parse(body, document)
    for message in list(document.findall(nodes.system_message)):
        message.parent.remove(message)
    headings: list[dict] = []
    blocks: list[Block] = []
    kinds = {nodes.paragraph: "paragraph", nodes.literal_block: "code", nodes.doctest_block: "code",
             nodes.bullet_list: "list", nodes.enumerated_list: "list", nodes.definition_list: "list",
             nodes.field_list: "list", nodes.option_list: "list", nodes.table: "table",
             nodes.block_quote: "quote", nodes.line_block: "paragraph"}
    skip = (nodes.system_message, nodes.comment, nodes.substitution_definition, nodes.target,
            nodes.pending, nodes.raw)

    def walk(node, path: list[str], level: int) -> None:
        for child in node.children:
            if isinstance(child, nodes.section):
                title_node = child.next_node(nodes.title)
                title = title_node.astext().strip() if title_node is not None else ""
                headings.append({"level": level + 1, "title": title})
                walk(child, path + [title], level + 1)
            elif isinstance(child, (nodes.title, *skip)):
                continue
            elif isinstance(child, nodes.Element):
                kind = next((k for cls, k in kinds.items() if isinstance(child, cls)), None)
                if kind is None:
                    if any(isinstance(c, nodes.Element) for c in child.children):
                        walk(child, path, level)
                    else:
                        blocks.append(Block("other", child.astext().strip(), path))
                else:
                    blocks.append(Block(kind, child.astext().strip(), path))

    walk(document, [], 0)
    title = str(metadata.get("title") or (headings[0]["title"] if headings else ""))
    return ParsedDocument("rst", title, metadata, headings, [b for b in blocks if b.text.strip()])


def chunk_texts(doc: ParsedDocument, counter) -> list[str]:
    blocks = [{"kind": b.kind, "text": b.text, "path": b.heading_path} for b in doc.blocks]
    document = DocumentToChunk(uuid.uuid4(), "x", b"", doc.title, "full", doc.metadata, blocks)
    return [c.text for c in build_chunks(document, "peps", ChunkSettings(), counter)]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--show", help="print the differing blocks of this PEP (file name)")
    parser.add_argument("--files", type=int, default=0)
    args = parser.parse_args()
    files = sorted(PEPS.glob("*.rst"))[: args.files or None]
    if args.show:
        files = [PEPS / args.show]
    counter = HashEmbedder().token_counter
    same = {"headings": 0, "block texts": 0, "chunk texts": 0, "roles read": 0, "role headings": 0}
    blocks_same = blocks_total = chunks_same = chunks_total = roles_same = 0
    t_new = t_old = 0.0
    for path in files:
        data = path.read_bytes()
        started = time.perf_counter()
        new = parse_document(path.name, data)
        t_new += time.perf_counter() - started
        started = time.perf_counter()
        old = docutils_document(data.decode("utf-8", errors="replace"))
        t_old += time.perf_counter() - started
        same["headings"] += new.headings == old.headings
        old_blocks = [(tuple(b.heading_path), b.text) for b in old.blocks]
        new_blocks = [(tuple(b.heading_path), b.text) for b in new.blocks]
        same["block texts"] += old_blocks == new_blocks
        read = [(tuple(read_roles(h) for h in path), read_roles(text)) for path, text in old_blocks]
        same["roles read"] += read == new_blocks
        roles_same += len(set(read) & set(new_blocks))
        same["role headings"] += [{**h, "title": read_roles(h["title"])} for h in old.headings] == new.headings
        blocks_total += len(old_blocks)
        blocks_same += len(set(old_blocks) & set(new_blocks))
        old_chunks, new_chunks = chunk_texts(old, counter), chunk_texts(new, counter)
        same["chunk texts"] += old_chunks == new_chunks
        chunks_total += len(old_chunks)
        chunks_same += len(set(old_chunks) & set(new_chunks))
        if args.show:
            for line in difflib.unified_diff([repr(b) for b in old_blocks], [repr(b) for b in new_blocks],
                                             "docutils", "rst.py", lineterm="", n=0):
                print(line)
            for a, b in zip(old.headings, new.headings):
                if a != b:
                    print("heading", a, b)
    print_table(f"reST parity on {len(files)} PEPs: rst.py against docutils (parse only)", [
        ("measure", "PEPs identical", "share of items kept"),
        ("heading tree", f"{same['headings']}/{len(files)}", ""),
        ("blocks (heading path + text)", f"{same['block texts']}/{len(files)}",
         f"{blocks_same}/{blocks_total} docutils blocks found as is"),
        ("heading tree, roles read as their text", f"{same['role headings']}/{len(files)}", ""),
        ("blocks, roles read as their text", f"{same['roles read']}/{len(files)}",
         f"{roles_same}/{blocks_total} docutils blocks found"),
        ("chunk texts", f"{same['chunk texts']}/{len(files)}",
         f"{chunks_same}/{chunks_total} docutils chunks found as is (their vectors are reused)"),
        ("parse seconds, one core", f"rst.py {t_new:.2f}", f"docutils {t_old:.2f}"),
    ])


if __name__ == "__main__":
    main()
