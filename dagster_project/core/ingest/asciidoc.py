"""AsciiDoc (Asciidoctor's syntax, as documentation sites such as Antora write it) read into
sections and blocks, without a library: the document title and header attributes, section titles
(`==` ... `======`, or Markdown-style `#`), paragraphs, lists, delimited blocks (listing and
literal as code, tables as pipe tables, example / sidebar / quote / open blocks as the text they
hold, comments and passthrough left out), admonitions (`NOTE:`, `[TIP]`) as their text, block
titles (`.Title`) as a line of text, and inline markup reduced to its text (`xref:x.adoc[the
text]`, `<<id,text>>`, `link:url[text]`, `{attribute}` replaced by its value).

Items: ("title", text) once, ("section", level, title), (kind, text) for a block, ("warning", text)."""

from __future__ import annotations

import re

MAX_ATTRIBUTE_CHARS = 4096  # Asciidoctor's max-attribute-value-size in its secure mode
MIN_EXPANSION, EXPANSION = 100_000, 4  # what attribute references may add to a page, in characters
_SECTION = re.compile(r"^(={1,6}|#{1,6})[ \t]+(\S.*?)[ \t]*(?:[ \t]\1)?$")
_ATTRIBUTE = re.compile(r"^:(!?[\w][\w-]*!?):(?:[ \t]+(.*))?$")
_BLOCK_ATTRIBUTES = re.compile(r"^\[(?P<body>[^\[\]]*)\]$")  # [source,java], [NOTE], [[anchor]], [#id.role]
_ANCHOR = re.compile(r"^\[\[[^\[\]]*\]\]$")
_BLOCK_TITLE = re.compile(r"^\.(?=[^\s.])(.+)$")
_DELIMITER = re.compile(r"^(-{4,}|\.{4,}|={4,}|\*{4,}|_{4,}|\+{4,}|/{4,}|--|\|={3,})[ \t]*$")
_ADMONITION = re.compile(r"^(NOTE|TIP|IMPORTANT|WARNING|CAUTION):[ \t]+")
_LIST = re.compile(r"^(?:[*\-.]+|\d+\.|[a-z]\.)[ \t]+\S|^.+?(?::{2,4}|;;)(?:[ \t]|$)")
_INCLUDE = re.compile(r"^include::([^\[]+)\[.*\]$")
_DIRECTIVE = re.compile(r"^(?:ifdef|ifndef|ifeval|endif|toc|image)::")
_CODE_BLOCKS = {"-", "."}  # listing, literal
_SKIPPED_BLOCKS = {"/", "+"}  # comment, passthrough
_ADMONITION_STYLES = {"NOTE", "TIP", "IMPORTANT", "WARNING", "CAUTION"}

_INLINE = [  # each bounded and within a line: a hostile line of `xref:a[xref:a[...` costs linear time
    (re.compile(r"\b(?:xref|link|mailto):([^\s\[]{1,500})\[([^\]\n]{0,500})\]"), lambda m: m.group(2) or m.group(1)),
    (re.compile(r"\b(?:https?|ftp)://[^\s\[]{1,2000}\[([^\]\n]{0,500})\]"), lambda m: m.group(1)),
    (re.compile(r"<<([^,>\n]{1,200}),[ \t]*([^>\n]{1,500})>>"), lambda m: m.group(2)),
    (re.compile(r"<<([^>\n]{1,200})>>"), lambda m: m.group(1).replace("-", " ").replace("_", " ").strip("#")),
    (re.compile(r"\bimage:{1,2}[^\[\s]{0,500}\[([^\],\n]{0,500})[^\]\n]{0,500}\]"), lambda m: m.group(1)),
    (re.compile(r"\b(?:kbd|btn|menu|footnote|pass|indexterm2?):[^\[\s]{0,200}\[([^\]\n]{0,500})\]"), lambda m: m.group(1)),
    (re.compile(r"\[\[[^\]\n]{0,200}\]\]|\[[#.][\w.#-]{0,200}\](?=[*_`#])"), lambda m: ""),
    (re.compile(r"(?<![\w*])\*{1,2}(\S(?:[^\n*]{0,100}?\S)?)\*{1,2}(?![\w*])"), lambda m: m.group(1)),
    (re.compile(r"(?<![\w_])_{1,2}(\S(?:[^\n_]{0,100}?\S)?)_{1,2}(?![\w_])"), lambda m: m.group(1)),
    (re.compile(r" \+$", re.MULTILINE), lambda m: ""),  # a hard line break
]


class _Attributes(dict):
    """Attribute values by name, and what their references may still add to the page: each
    `{name}` is replaced by a value, so an 18 KB page of 2,000 references to a 10 KB value was
    22 MB of text. A value over MAX_ATTRIBUTE_CHARS, or any once the page has grown by
    max(MIN_EXPANSION, EXPANSION x its size), is left as its reference (and said once)."""

    def __init__(self, page_chars: int) -> None:
        super().__init__()
        self.budget = max(MIN_EXPANSION, EXPANSION * page_chars)
        self.capped = False

    def expand(self, match: re.Match) -> str:
        value = self.get(match.group(1).lower())
        if value is None:
            return match.group(0)
        if len(value) > MAX_ATTRIBUTE_CHARS or len(value) > self.budget:
            self.capped = True
            return match.group(0)
        self.budget -= len(value)
        return value


def _inline(text: str, attributes: _Attributes) -> str:
    text = re.sub(r"\{([\w-]+)\}", attributes.expand, text)
    for pattern, replace in _INLINE:
        text = pattern.sub(replace, text)
    return text


def _table(lines: list[str]) -> str:
    """A `|===` table's rows as a pipe table: a blank line or one line per cell ends a row in
    Asciidoctor too; rows are taken as the header row's cell count (the first non-empty line)."""
    cells = [c.strip() for line in lines for c in re.split(r"(?<!\\)\|", line)[1:]] if lines else []
    first = next((line for line in lines if line.strip()), "")
    width = max(1, len(re.split(r"(?<!\\)\|", first)) - 1)
    rows = [cells[i:i + width] for i in range(0, len(cells), width)]
    if not rows:
        return ""
    out = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * width]
    out += ["| " + " | ".join(r + [""] * (width - len(r))) + " |" for r in rows[1:]]
    return "\n".join(out)


def _set_attribute(match: re.Match | None, attributes: _Attributes) -> bool:
    """An attribute entry (`:name: value`; `:name!:` unsets, and is dropped like the others)."""
    if match is None:
        return False
    name = match.group(1)
    if not name.startswith("!") and not name.endswith("!"):
        attributes[name.lower()] = (match.group(2) or "").strip()
    return True


def parse_asciidoc_blocks(text: str) -> tuple[dict[str, str], list[tuple]]:
    """(header attributes, items) of an AsciiDoc document (see the module)."""
    lines = text.replace("\r\n", "\n").split("\n")
    attributes = _Attributes(len(text))
    items: list[tuple] = []
    i, n = 0, len(lines)
    while i < n and (not lines[i].strip() or lines[i].startswith("//") and not lines[i].startswith("////")):
        i += 1
    if i < n and re.match(r"^=[ \t]+\S", lines[i]):  # the document header
        items.append(("title", _inline(lines[i][1:].strip(), attributes)))
        i += 1
        while i < n and lines[i].strip():
            _set_attribute(_ATTRIBUTE.match(lines[i]), attributes)
            i += 1
    style: str | None = None  # the block attribute line's first positional value, for the next block
    paragraph: list[str] = []

    def flush() -> None:
        nonlocal style
        if not paragraph:
            return
        body = "\n".join(line for line in paragraph if line.strip() != "+")  # a list item's continuation mark
        if style == "source" or style == "listing" or style == "literal":
            items.append(("code", body))
        else:
            admonition = _ADMONITION.match(body)
            body = body[admonition.end():] if admonition else body
            first = paragraph[0]
            kind = ("code" if first[:1] in " \t" else "list" if _LIST.match(first) else
                    "quote" if style in ("quote", "verse") else "paragraph")
            items.append((kind, _inline(body, attributes) if kind != "code" else body))
        paragraph.clear()
        style = None

    while i < n:
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            flush()
            i += 1
            continue
        if paragraph and not (_DELIMITER.match(stripped) or _BLOCK_ATTRIBUTES.match(stripped)):
            if not line.startswith("//") or line.startswith("///"):
                paragraph.append(line)
            i += 1
            continue
        flush()
        if line.startswith("//") and not _DELIMITER.match(stripped):
            i += 1
            continue
        match = _SECTION.match(line)
        if match and not line.startswith("#" * 7):
            items.append(("section", len(match.group(1)), _inline(match.group(2), attributes)))
            style = None
            i += 1
            continue
        if _set_attribute(_ATTRIBUTE.match(line), attributes):
            i += 1
            continue
        if _ANCHOR.match(stripped) or _DIRECTIVE.match(stripped):  # an anchor, ifdef::, toc::...: no text
            i += 1
            continue
        match = _BLOCK_ATTRIBUTES.match(stripped)
        if match:
            first = match.group("body").split(",")[0].strip()
            style = first.lower() if first.upper() not in _ADMONITION_STYLES else "admonition"
            i += 1
            continue
        match = _BLOCK_TITLE.match(stripped)
        if match:
            items.append(("paragraph", _inline(match.group(1), attributes)))
            i += 1
            continue
        match = _INCLUDE.match(stripped)
        if match:
            items.append(("warning", f"include::{match.group(1)}[] is not resolved in AsciiDoc: the included "
                                     "text is not indexed with this page (index that file itself)"))
            i += 1
            continue
        match = _DELIMITER.match(stripped)
        if match:
            delimiter = match.group(1)
            char = delimiter[0]
            if char not in _SKIPPED_BLOCKS and char not in _CODE_BLOCKS and char != "|" \
                    and style not in ("source", "listing", "literal"):
                i += 1  # an example, sidebar, quote or open block: its content is read as the page's own
                continue
            end = next((j for j in range(i + 1, n) if lines[j].strip() == delimiter), None)
            if end is None:
                what = {"|": "table", "/": "comment block", "+": "passthrough block"}.get(char, "listing block")
                if char == "/":  # hidden to the end, as Asciidoctor renders it
                    items.append(("warning", f"unterminated comment block (`{delimiter}` at line {i + 1} is never "
                                             "closed): the rest of the page is a comment; close it"))
                    break
                # The rest of the page is read as text, not swallowed: what to fix is said.
                items.append(("warning", f"unterminated {what} (`{delimiter}` at line {i + 1} is never closed): "
                                         f"the rest of the page is read as text; close it with `{delimiter}`"))
                i += 1
                style = None
                continue
            if char == "|":
                table = _table([_inline(b, attributes) for b in lines[i + 1:end]])
                if table:
                    items.append(("table", table))
            elif char not in _SKIPPED_BLOCKS:
                code = "\n".join(lines[i + 1:end])
                if code.strip():
                    items.append(("code", code))
            i = end + 1
            style = None
            continue
        paragraph.append(line)
        i += 1
    flush()
    if attributes.capped:
        items.append(("warning", f"attribute references left unexpanded: a value over {MAX_ATTRIBUTE_CHARS} characters, "
                                 "or references that would multiply the page's size; shorten the attribute values"))
    return dict(attributes), items
