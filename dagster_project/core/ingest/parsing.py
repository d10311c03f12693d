"""Parsers for Markdown, reStructuredText, HTML and plain text (PDF, Word, PowerPoint: formats/).
Each turns a file's bytes into a title, metadata (YAML front matter or a PEP-style header block),
the heading tree and text blocks that know their heading path. Built on markdown-it-py, our own
reST block parser (rst.py), BeautifulSoup and the standard library's RFC 822 header parser."""

from __future__ import annotations

import datetime
import email.parser
import html
import json
import math
import posixpath
import re
from dataclasses import dataclass, field
from typing import Literal

import yaml

from .rst import parse_rst_blocks

Severity = Literal["error", "warning"]
# Bump when parsing changes what a file yields: every file is parsed again (v4: PDF, Word,
# PowerPoint; reST by rst.py; v5: an HTML page's navigation, sidebars, banner and footer left out;
# v6: Markdown's HTML blocks and inline HTML as their text, headings without their attribute lists, MDX;
# AsciiDoc and Jupyter notebooks; v7: reST directive arguments as Sphinx shows them, cross-references
# as names, a leading field list as metadata; v8: no indented code in MDX, headings' inline HTML
# as text).
PARSER_VERSION = "parsers-v9"
# Front matter is a handful of keys; PyYAML needs ~100x its size in memory, so a bound keeps a
# hostile header from costing gigabytes.
MAX_FRONT_MATTER_BYTES = 64 * 1024
MAX_METADATA_BYTES = 64 * 1024  # a document's metadata as stored (JSON)
FORMATS = {".md": "markdown", ".markdown": "markdown", ".mdx": "markdown", ".rst": "rst", ".txt": "text",
           ".html": "html", ".htm": "html", ".ipynb": "notebook", ".adoc": "asciidoc", ".asciidoc": "asciidoc"}


class ParseError(ValueError):
    """The file cannot be ingested; `reason` says why and what to do."""

    def __init__(self, reason: str, severity: Severity = "error") -> None:
        super().__init__(reason)
        self.reason = reason
        self.severity = severity

    def __reduce__(self):  # keep the severity when a parse worker sends the error back
        return type(self), (self.reason, self.severity)


@dataclass
class Block:
    kind: str  # paragraph | code | list | table | quote | other
    text: str
    heading_path: list[str]
    page: int | None = None  # page or slide number, in formats that have them


@dataclass
class ParsedDocument:
    format: str
    title: str
    metadata: dict
    headings: list[dict]  # [{"level": 1, "title": "..."}], in document order
    blocks: list[Block]
    warnings: list[str] = field(default_factory=list)
    pricing_evidence: int | None = None  # of the title and blocks (refine.redaction), where it was parsed


def parse_document(path: str, data: bytes) -> ParsedDocument:
    from .formats import BINARY_FORMATS, parse_binary

    extension = posixpath.splitext(path)[1].lower()
    fmt = FORMATS.get(extension) or BINARY_FORMATS.get(extension)
    if fmt is None:
        raise ParseError(
            f"unsupported extension {extension or '(none)'!r}: supported are "
            f"{', '.join(sorted([*FORMATS, *BINARY_FORMATS]))}; exclude the file in corpus.yaml",
            severity="warning",
        )
    if extension in BINARY_FORMATS:
        doc = parse_binary(fmt, data)
    else:
        text, warnings = decode(data)
        if not text.strip():
            # Stored as a document with no text, so whatever it held before leaves the index.
            title = posixpath.splitext(posixpath.basename(path))[0]
            return ParsedDocument(fmt, title, {}, [], [], warnings + [
                "no text to index: the file is empty, or holds only markup that is not indexed (comments, "
                "templating, component tags, admonition markers)"])
        parser = {"markdown": _parse_markdown, "rst": _parse_rst, "html": _parse_html, "text": _parse_text,
                  "notebook": _parse_notebook, "asciidoc": _parse_asciidoc}[fmt]
        doc = _parse_markdown(text, mdx=extension == ".mdx") if fmt == "markdown" else parser(text)
        doc.warnings[:0] = warnings
    doc.metadata = json_safe_metadata(doc.metadata, doc.warnings)
    for block in doc.blocks:
        block.text = _strip_data_uris(block.text)
    doc.blocks = [b for b in doc.blocks if b.text.strip()]
    if not doc.blocks:  # with a warning that says why (an include not resolved), no advice
        doc.warnings.append("the file yields no text (only markup, comments or headings?): nothing of it "
                            "is searchable but its title" + ("" if doc.warnings else "; check its markup"))
    title = doc.title.replace("\0", "")  # a title from front matter (PostgreSQL text refuses NUL)
    if not title.strip():
        title = posixpath.splitext(posixpath.basename(path))[0]
    # Cut before collapsing whitespace: splitting a whole one-line file into words costs ~10x its size.
    doc.title = " ".join(title[:3000].split())[:300]
    return doc


def json_safe_metadata(meta: dict, warnings: list[str]) -> dict:
    """Metadata as PostgreSQL's jsonb takes it: string keys, no NaN or infinity (not JSON), no
    NUL (not in jsonb), dates as ISO strings, integers that fit a float; at most
    MAX_METADATA_BYTES. What had to change is reported in `warnings`."""
    changed: set[str] = set()

    def clean(value, key: str):
        if isinstance(value, str):
            if "\0" in value:
                changed.add(f"{key}: NUL characters removed")
            return value.replace("\0", "")
        if isinstance(value, bool) or value is None:
            return value
        if isinstance(value, int):
            if abs(value) < 2**53:
                return value
            changed.add(f"{key}: integer too large for JSON, stored as text")
            return str(value) if value.bit_length() < 10_000 else f"<integer of {value.bit_length()} bits>"
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            changed.add(f"{key}: {value} is not a JSON number, stored as text")
            return str(value)
        if isinstance(value, datetime.date | datetime.time):
            return value.isoformat()
        if isinstance(value, dict):
            return {clean(str(k), key): clean(v, f"{key}.{k}") for k, v in value.items()}
        if isinstance(value, list | tuple | set | frozenset):
            return [clean(v, key) for v in value]
        if isinstance(value, bytes):
            changed.add(f"{key}: binary value dropped")
            return f"<{len(value)} bytes>"
        return clean(str(value), key)

    safe = {clean(str(k), str(k)): clean(v, str(k)) for k, v in meta.items()}
    warnings.extend(f"metadata {c}" for c in sorted(changed)[:10])
    size = len(json.dumps(safe, ensure_ascii=False).encode())
    if size > MAX_METADATA_BYTES:
        raise ParseError(f"metadata is {size} bytes, over the {MAX_METADATA_BYTES}-byte limit: keep long text "
                         "out of front matter and <meta> tags (a version indexed earlier, if any, stays indexed)")
    return safe


_DATA_URI = re.compile(r"(data:[\w/+.-]+;base64,)[A-Za-z0-9+/=]{64,}")


def _strip_data_uris(text: str) -> str:
    """Inline base64 images are bytes, not text: they would fill chunks with noise."""
    return _DATA_URI.sub(r"\1…", text)


def decode(data: bytes) -> tuple[str, list[str]]:
    if b"\x00" in data:
        raise ParseError("binary file (contains NUL bytes): exclude it in corpus.yaml")
    bom = 3 if data.startswith(b"\xef\xbb\xbf") else 0
    data = data[bom:]
    try:
        return data.decode("utf-8"), []
    except UnicodeDecodeError as exc:
        return data.decode("utf-8", errors="replace"), [
            f"not valid UTF-8 (first bad byte at offset {exc.start + bom}); undecodable bytes were "
            "replaced with U+FFFD: re-save the file as UTF-8"
        ]


def _normalize_metadata(raw: dict) -> dict:
    return {str(k).strip().lower().replace("-", "_"): v for k, v in raw.items()}


# ---------------------------------------------------------------- Markdown

class _FrontMatterLoader(yaml.SafeLoader):
    """safe_load without aliases: a few nested aliases expand to billions of nodes (346 bytes
    took 5 GB). Anchors alone are harmless, but front matter has no use for either."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            raise yaml.composer.ComposerError(None, None, "aliases (*name) are not allowed in front matter",
                                              self.peek_event().start_mark)
        return super().compose_node(parent, index)


def _split_front_matter(text: str) -> tuple[dict, str, list[str]]:
    lines = text.splitlines(keepends=True)
    if not lines or lines[0].strip() != "---":
        return {}, text, []
    for end in range(1, len(lines)):
        if lines[end].strip() in ("---", "..."):
            header = "".join(lines[1:end])
            body = "".join(lines[end + 1:])
            if len(header.encode()) > MAX_FRONT_MATTER_BYTES:
                raise ParseError(f"front matter is over {MAX_FRONT_MATTER_BYTES} bytes: keep it to a few keys "
                                 "(a version indexed earlier, if any, stays indexed)")
            try:
                meta = yaml.load(header, Loader=_FrontMatterLoader)
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f" (line {mark.line + 2})" if mark else ""
                if "aliases" in str(getattr(exc, "problem", "")):
                    raise ParseError(f"front matter uses a YAML alias{where}: aliases are refused (they can "
                                     "expand without bound); write the value out (the last good version "
                                     "stays indexed)") from None
                # Front matter may say embed_mode: skip or pricing_sensitive: true; ignoring it
                # would publish what it protects. The file keeps its last good version instead.
                raise ParseError(f"front matter is not valid YAML{where}: fix the YAML between the --- lines "
                                 "(a version indexed earlier, if any, stays indexed)") from None
            if meta is None:
                return {}, body, []
            if not isinstance(meta, dict):
                raise ParseError("front matter is not a mapping of key: value: fix it "
                                 "(a version indexed earlier, if any, stays indexed)")
            return _normalize_metadata(meta), body, []
    return {}, text, ["front matter has no closing --- line: it was read as text"]


# A heading's attribute list (`## Setup { #setup }`, `{#id .class}`, kramdown's `{: #id}`; MkDocs,
# Pandoc, Hugo, Jekyll): the anchor, not the title; left in, it was in every chunk's context.
_HEADING_ATTRIBUTES = re.compile(r"[ \t]*\{:?[ \t]*(?:[#.][\w-]|[\w-]+=)[^{}]*\}[ \t]*$")


def _parse_markdown(text: str, mdx: bool = False) -> ParsedDocument:
    from markdown_it import MarkdownIt

    metadata, body, warnings = _split_front_matter(text)
    source_lines = body.splitlines()
    parser = MarkdownIt("commonmark").enable("table")
    if mdx:  # MDX has no indented code blocks: a component's indented body is prose (Mintlify's <Card>s)
        parser.disable("code")
    tokens = parser.parse(body)
    headings: list[dict] = []
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    kinds = {"paragraph_open": "paragraph", "fence": "code", "code_block": "code",
             "bullet_list_open": "list", "ordered_list_open": "list", "table_open": "table",
             "blockquote_open": "quote", "html_block": "other"}
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.type == "heading_open" and token.level == 0:
            level = int(token.tag[1])
            title = _inline_html_text(_HEADING_ATTRIBUTES.sub("", tokens[i + 1].content)).strip()
            headings.append({"level": level, "title": title})
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
            i += 3
            continue
        if token.level == 0 and token.type in kinds and token.map:
            start, end = token.map
            raw = "\n".join(source_lines[start:end]).strip()
            if token.type == "html_block":
                blocks.extend(Block(kind, text, [t for _, t in path]) for kind, text in _html_block_text(raw))
            elif token.type in ("fence", "code_block"):
                blocks.append(Block(kinds[token.type], raw, [t for _, t in path]))
            else:
                blocks.append(Block(kinds[token.type], _inline_html_text(raw), [t for _, t in path]))
        i += 1
    title = str(metadata.get("title") or (headings[0]["title"] if headings else ""))
    return ParsedDocument("markdown", title, metadata, headings, blocks, warnings)


# Inline HTML in Markdown prose, outside code spans: entities are characters, the tags go, their text stays, and what an
# <abbr>/<dfn> title or an <img> alt says is kept ("ASGI (Asynchronous Server Gateway Interface)"):
# it is often the plain words a question uses. Only HTML's own element names: `<https://x>` is
# an autolink and `List<String>` prose.
_HTML_ELEMENTS = ("a|abbr|acronym|b|bdi|bdo|big|br|center|cite|code|data|del|details|dfn|div|em|figcaption|figure|font|"
                  "i|img|ins|kbd|label|li|mark|ol|p|q|s|samp|small|span|strike|strong|sub|summary|sup|table|tbody|td|"
                  "tfoot|th|thead|time|tr|tt|u|ul|var|wbr")
_TITLED = re.compile(r"<(abbr|acronym|dfn)\b[^<>]{0,1000}?\btitle=(?:\"([^\"<>]*)\"|'([^'<>]*)')[^<>]{0,1000}>"
                     r"([^<>]{0,500})</\1\s*>", re.IGNORECASE)
_ALT = re.compile(r"<img\b[^<>]{0,2000}?\balt=(?:\"([^\"<>]*)\"|'([^'<>]*)')[^<>]{0,2000}>", re.IGNORECASE)
_TAG = re.compile(rf"</?({_HTML_ELEMENTS})\b(?:[^<>\"']|\"[^\"]*\"|'[^']*'){{0,2000}}/?>", re.IGNORECASE)
_SPACED = {"br", "center", "details", "div", "figcaption", "figure", "li", "ol", "p", "summary", "table", "tbody",
           "td", "tfoot", "th", "thead", "tr", "ul"}  # a break between words; other tags sit inside words


def _inline_html_text(text: str) -> str:
    """Markdown prose with its inline HTML as text (the code spans as written). Links and images
    stay as written: read as their text alone, they cost the Hugo set (docs/architecture.md)."""
    if "<" not in text and "&" not in text:
        return text
    from .dialects import outside_code_spans

    def prose_text(prose: str) -> str:
        if "<" in prose:
            prose = _TITLED.sub(lambda m: f"{m.group(4)} ({m.group(2) or m.group(3) or ''})"
                                if (m.group(2) or m.group(3)) else m.group(4), prose)
            prose = _ALT.sub(lambda m: f" {m.group(1) or m.group(2) or ''} ", prose)
            prose = _TAG.sub(lambda m: " " if m.group(1).lower() in _SPACED else "", prose)
            prose = re.sub(r"[ \t]{2,}", " ", prose)
        if "&" in prose:  # after the tags: `&lt;div&gt;` shows a tag, it is not one; &nbsp; was a chunk of its own
            prose = html.unescape(prose).replace("\xa0", " ")
        return prose

    return outside_code_spans(text, prose_text).strip()


def _html_block_text(raw: str) -> list[tuple[str, str]]:
    """(kind, text) of an HTML block in Markdown: its text without the tags (a table as a pipe
    table, <pre> as code), nothing for tags alone (`<div class="x">`, `</details>`, an embed).
    Indexed as written, the tags were words of their own in search and in the embedded text."""
    if "<" not in raw:
        return [("other", raw)]
    from bs4 import BeautifulSoup, Comment

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "svg", "button"]):
        tag.decompose()
    for comment in soup.find_all(string=lambda s: isinstance(s, Comment)):
        comment.extract()
    for image in soup.find_all("img"):  # what the image shows, in words, as inline HTML keeps it (_ALT)
        alt = image.get("alt")
        image.replace_with(f" {alt} " if isinstance(alt, str) and alt.strip() else "")
    out = []
    for element in soup.find_all(["table", "pre"]):
        if not element.decomposed and element.find_parent(["table", "pre"]) is None:
            out.append(("table" if element.name == "table" else "code", _block_text(element)))
            element.decompose()
    text = soup.get_text(" ", strip=True)
    return [(kind, text) for kind, text in [("other", text), *out] if text.strip()]


# ---------------------------------------------------------------- AsciiDoc

def _add_warning(warnings: list[str], warning: str) -> None:
    """A block parser's warning, once, and at most 10 for a file (reST, AsciiDoc)."""
    if warning not in warnings and len(warnings) < 10:
        warnings.append(warning)


def _parse_asciidoc(text: str) -> ParsedDocument:
    from .asciidoc import parse_asciidoc_blocks

    attributes, items = parse_asciidoc_blocks(text)
    headings: list[dict] = []
    blocks: list[Block] = []
    path: list[str] = []
    warnings: list[str] = []
    title = ""
    for item in items:
        if item[0] == "title":  # `= Title`: the page's level-1 heading, as `# Title` in Markdown
            title = item[1]
            headings.append({"level": 1, "title": title})
            path = [title]
        elif item[0] == "section":  # `==` is level 2
            _, level, name = item
            headings.append({"level": level, "title": name})
            path = path[:level - 1] + [name]
        elif item[0] == "warning":
            _add_warning(warnings, item[1])
        else:
            blocks.append(Block(item[0], item[1].strip(), list(path)))
    title = title or (headings[0]["title"] if headings else "")
    return ParsedDocument("asciidoc", title, _normalize_metadata(attributes), headings, blocks, warnings)


# ---------------------------------------------------------------- Jupyter notebooks

def _parse_notebook(text: str) -> ParsedDocument:
    """A Jupyter notebook (nbformat 3 or 4) as the Markdown page it reads as: its Markdown cells,
    and its code cells as fenced code in the kernel's language. Outputs are left out: rendered
    tables, images and logs of one run, not what the notebook says."""
    try:
        notebook = json.loads(text)
    except RecursionError:
        raise ParseError("not a readable notebook: its JSON is nested too deeply to be a notebook "
                         "(exclude it in corpus.yaml)") from None
    except json.JSONDecodeError as exc:
        raise ParseError(f"not a readable notebook: invalid JSON at line {exc.lineno}, column {exc.colno}; "
                         "open and save it in Jupyter (a version indexed earlier, if any, stays indexed)") from None
    if not isinstance(notebook, dict):
        raise ParseError("not a Jupyter notebook (the JSON is not an object with `cells`): exclude it in corpus.yaml")
    cells = notebook.get("cells")
    if cells is None:  # nbformat 3
        sheets = notebook.get("worksheets") or [{}]
        cells = sheets[0].get("cells") if isinstance(sheets, list) and isinstance(sheets[0], dict) else None
    if not isinstance(cells, list):
        raise ParseError("not a Jupyter notebook (no list of `cells`): exclude it in corpus.yaml")
    meta = notebook.get("metadata") if isinstance(notebook.get("metadata"), dict) else {}
    kernel, info = (meta.get(k) if isinstance(meta.get(k), dict) else {} for k in ("kernelspec", "language_info"))
    language = re.sub(r"[^\w+-]", "", str(kernel.get("language") or info.get("name") or ""))
    parts = []
    for cell in cells:
        if not isinstance(cell, dict):
            continue
        source = cell.get("source", cell.get("input", ""))
        source = "".join(str(s) for s in source) if isinstance(source, list) else str(source)
        if not source.strip():
            continue
        if cell.get("cell_type") in ("markdown", "heading"):
            level = cell.get("level") if cell.get("cell_type") == "heading" else None  # nbformat 3
            parts.append(_notebook_markdown(f"{'#' * int(level)} {source}" if isinstance(level, int) and 1 <= level <= 6
                                            else source))
        elif cell.get("cell_type") == "code":
            fence = "`" * max(3, 1 + max((len(run) for run in re.findall(r"`+", source)), default=0))
            parts.append(f"{fence}{language}\n{source.rstrip()}\n{fence}")
    doc = _parse_markdown("\n\n" + "\n\n".join(parts))  # a first cell's `---` is a rule, not front matter
    metadata = {k: v for k, v in _normalize_metadata(meta).items() if k in ("title", "authors", "description", "tags")}
    title = str(metadata.get("title") or (doc.headings[0]["title"] if doc.headings else ""))
    return ParsedDocument("notebook", title, metadata, doc.headings, doc.blocks, doc.warnings)


def _notebook_markdown(source: str) -> str:
    """A Markdown cell as Jupyter (or Jupyter Book) renders it, on its own: its dialects unwrapped
    (a MyST note is prose, not code), comments and template tags out, and a code fence it leaves
    open closed at its end, so the next cells are not read as code."""
    from .templating import MarkdownTemplating, open_fence, render_markdown

    text, _ = render_markdown("cell.md", "\n" + source, MarkdownTemplating(includes="strip"), lambda _: None)
    fence = open_fence(text)
    return text if fence is None else f"{text.rstrip()}\n{fence}"


# ---------------------------------------------------------------- reStructuredText

def _split_header_block(text: str) -> tuple[dict, str]:
    """A PEP-style RFC 822 header block ("Title: ...", continuation lines indented) before
    the first blank line; anything else leaves the text untouched."""
    head, sep, rest = text.lstrip("\n").partition("\n\n")
    first = head.split("\n", 1)[0]
    if not sep or ":" not in first or first[:1].isspace() or " " in first.split(":", 1)[0]:
        return {}, text
    message = email.parser.HeaderParser().parsestr(head + "\n\n")
    if message.defects or message.get_payload().strip():
        return {}, text
    # "Note: the API changed." is a paragraph, not a header block: require a title or PEP number.
    if not {k.lower() for k in message.keys()} & {"title", "pep"}:
        return {}, text
    metadata = _normalize_metadata({k: " ".join(v.split()) for k, v in message.items()})
    if "type" in metadata and "doc_type" not in metadata:
        metadata["doc_type"] = metadata["type"]
    return metadata, rest


def _parse_rst(text: str) -> ParsedDocument:
    metadata, body = _split_header_block(text)
    headings: list[dict] = []
    blocks: list[Block] = []
    path: list[str] = []
    warnings: list[str] = []
    for item in parse_rst_blocks(body):
        if item[0] == "docinfo":
            metadata = {**_normalize_metadata({k: v for k, v in item[1].items() if v}), **metadata}
        elif item[0] == "warning":
            _add_warning(warnings, item[1])
        elif item[0] == "section":
            _, level, title = item
            headings.append({"level": level, "title": title})
            path = path[:level - 1] + [title]
        else:
            blocks.append(Block(item[0], item[1].strip(), path))
    title = str(metadata.get("title") or (headings[0]["title"] if headings else ""))
    return ParsedDocument("rst", title, metadata, headings, blocks, warnings)


# ---------------------------------------------------------------- HTML

_HTML_BLOCKS = {"p": "paragraph", "pre": "code", "ul": "list", "ol": "list", "dl": "list",
                "table": "table", "blockquote": "quote"}
_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_INLINE = {"a", "abbr", "b", "bdi", "bdo", "br", "cite", "code", "data", "dfn", "em", "i", "kbd",
           "mark", "q", "s", "samp", "small", "span", "strong", "sub", "sup", "time", "u", "var",
           "img", "label", "wbr", "del", "ins"}


def _parse_html(text: str) -> ParsedDocument:
    from bs4 import BeautifulSoup, Comment, Doctype, NavigableString

    soup = BeautifulSoup(text, "html.parser")
    # not text: code, styles, icons (an <svg> sprite's titles), controls
    for tag in soup(["script", "style", "noscript", "template", "svg", "button"]):
        tag.decompose()
    metadata = {}
    for meta in soup.find_all("meta"):
        name, content = meta.get("name"), meta.get("content")
        if name and content is not None:
            metadata[name.strip().lower().replace("-", "_")] = content
    html_title = soup.title.get_text(" ", strip=True) if soup.title else ""
    if soup.head is not None:
        soup.head.decompose()
    root = _page_content(soup)
    headings: list[dict] = []
    blocks: list[Block] = []
    path: list[tuple[int, str]] = []
    loose: list[str] = []  # text outside any block element, e.g. directly inside a <div>

    def flush() -> None:
        content = " ".join(" ".join(loose).split())
        if content:
            blocks.append(Block("paragraph", content, [t for _, t in path]))
        loose.clear()

    # Depth-first with a stack of child iterators, not recursion: an old page with 1,200 unclosed
    # <font> tags (or a generated one with 100k nested <div>s) is as deep as Python's stack allows.
    stack = [iter(root.children)]
    while stack:
        child = next(stack[-1], None)
        if child is None:  # the end of an element: its content is a block of its own
            stack.pop()
            if stack:
                flush()
        elif isinstance(child, (Comment, Doctype)):
            continue
        elif isinstance(child, NavigableString):
            loose.append(str(child))
        elif child.name in _HEADINGS:
            flush()
            level, title = int(child.name[1]), child.get_text(" ", strip=True)
            headings.append({"level": level, "title": title})
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, title)]
        elif child.name in _HTML_BLOCKS:
            flush()
            blocks.append(Block(_HTML_BLOCKS[child.name], _block_text(child), [t for _, t in path]))
        elif child.name in _INLINE:
            loose.append(child.get_text(" "))
        else:  # div, section, article, main...: a boundary, then whatever it holds
            flush()
            stack.append(iter(child.children))
    flush()
    title = str(metadata.get("title") or html_title or (headings[0]["title"] if headings else ""))
    return ParsedDocument("html", title, metadata, headings, blocks)


# A published documentation page repeats the site around its text: navigation menus (often the
# whole table of contents), sidebars, the site's banner and footer, breadcrumbs, search boxes,
# "previous / next" links and each heading's permalink sign. Indexed, they are the same words on
# every page, and a question that names a section of the site matched every page that links to it.
# Landmarks, by their HTML element or ARIA role, as themes mark them (Sphinx, MkDocs, Docusaurus,
# Starlight): the text is what is left.
_CHROME_TAGS = ("nav", "footer")
_CHROME_ROLES = ("navigation", "banner", "contentinfo", "search", "complementary")
# Only outside the page's main content: inside it, an <aside> is a callout (a note, a warning) and
# a <header> holds the article's own title (outside, too, when it holds a heading).
_PAGE_CHROME_TAGS = ("aside", "header")
_PERMALINK_SIGNS = {"", "¶", "#", "§", "🔗", "link"}


def _page_content(soup):
    """The element holding a page's own text, its chrome removed: the page's single <main> (or
    role="main") or, without one, its single <article>; else the whole body."""
    for tag in soup.find_all(lambda t: t.name in _CHROME_TAGS or _role(t) in _CHROME_ROLES):
        if not tag.decomposed:
            tag.decompose()
    mains = _outermost(soup.find_all(lambda t: t.name == "main" or _role(t) == "main"))
    if len(mains) != 1:
        mains = _outermost(soup.find_all("article"))
    root = mains[0] if len(mains) == 1 and mains[0].get_text(strip=True) else (soup.body or soup)
    if root is soup.body or root is soup:
        for tag in root.find_all(_PAGE_CHROME_TAGS):
            # a page-level <header> that holds a heading is the page's own title block
            if not tag.decomposed and not (tag.name == "header" and tag.find(_HEADINGS)):
                tag.decompose()
    for heading in root.find_all(_HEADINGS):
        for link in heading.find_all("a"):
            if link.get_text(strip=True).lower() in _PERMALINK_SIGNS:
                link.decompose()
    return root


def _outermost(tags: list) -> list:
    """Those not inside another of them (by identity: bs4 compares tags by their content)."""
    found = {id(t) for t in tags}
    return [t for t in tags if not any(id(parent) in found for parent in t.parents)]


def _role(tag) -> str:
    role = tag.get("role")
    return role.strip().lower() if isinstance(role, str) else ""


def _block_text(element) -> str:
    if element.name == "table":
        from .formats.tables import pipe_table

        return pipe_table([[cell.get_text(" ", strip=True) for cell in row.find_all(["th", "td"], recursive=False)]
                           for row in element.find_all("tr")])
    if element.name == "pre":
        return element.get_text("")
    if element.name in ("ul", "ol"):
        # Direct items only: a nested list is part of its item's text, not a second copy.
        return "\n".join("- " + li.get_text(" ", strip=True) for li in element.find_all("li", recursive=False))
    return element.get_text(" ", strip=True)


# ---------------------------------------------------------------- plain text

def _parse_text(text: str) -> ParsedDocument:
    paragraphs = [p.strip() for p in text.replace("\r\n", "\n").split("\n\n")]
    paragraphs = [p for p in paragraphs if p]
    title = paragraphs[0][:3000].splitlines()[0] if paragraphs else ""
    return ParsedDocument("text", title, {}, [], [Block("paragraph", p, []) for p in paragraphs])
