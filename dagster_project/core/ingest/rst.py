"""reStructuredText to the blocks the chunker reads: sections (heading levels from the order of
adornment styles), paragraphs, literal and doctest blocks, lists, tables, quotes and directives,
with inline markup reduced to its text. A line-based parser, ~40x faster than docutils' parser."""

from __future__ import annotations

import csv
import re

# An item is (kind, text) for a block, ("walk", items) for a container whose blocks are read one
# by one (admonitions, footnotes), ("section", level, title) for a heading, ("warning", text) for
# what the reader should know (an include left out).
Item = tuple

_ADORNMENT = re.compile(r"([!-/:-@\[-`{-~])\1* *$")
_TRANSITION_MIN = 4
MAX_NESTING = 40  # lists in quotes in lists...: deeper than any real document
_BULLET = re.compile(r"([-+*\u2022\u2023\u2043])( +|$)")
_ENUMERATOR = re.compile(r"(\(?)(\d+|#|[a-zA-Z]|[ivxlcdmIVXLCDM]+)([.)])( +|$)")
_FIELD = re.compile(r":(?![: ])((?:[^:\\]|\\.|:(?!([ `]|$)))*)(?<! ):( +|$)")
_GRID_TOP = re.compile(r"\+-[-+]+-\+ *$")
_SIMPLE_BORDER = re.compile(r"=+( +=+)+ *$")
_EXPLICIT = re.compile(r"\.\.( +|$)")
_DIRECTIVE = re.compile(r"([\w]+(?:[-.+:][\w]+)*) ?::( +|$)")
_SUBSTITUTION_DEF = re.compile(r"\|[^|]+\| ")
_QUOTED = re.compile(r"[!-/:-@\[-`{-~]")
_OPTION = re.compile(r":([\w][\w.+-]*(?::[\w.+-]+)*):( +|$)")

# Directives whose content is not the author's prose (or is read from elsewhere): nothing indexed.
_DROPPED = {"contents", "sectnum", "section-numbering", "header", "footer", "raw", "include",
            "literalinclude", "meta", "title", "target-notes", "default-role", "role",
            "highlight", "index", "toctree", "unicode", "date", "replace", "productionlist",
            "canonical-doc", "canonical-pypa-spec", "canonical-typing-spec"}
# Directives whose content is code or a diagram's source (Sphinx's doctest, IPython, plots...).
_CODE = {"code", "code-block", "sourcecode", "doctest", "testcode", "testoutput", "testsetup", "testcleanup",
         "ipython", "jupyter-execute", "code-cell", "code-tab", "plot", "graphviz", "digraph", "graph", "mermaid",
         "plantuml"}
_QUOTES = {"epigraph", "highlights", "pull-quote"}
_ADMONITIONS = {"attention", "caution", "danger", "error", "hint", "important", "note", "tip", "warning",
                "seealso"}
# Directives whose argument is not text (a class name, a condition, a module context): only their
# content is. Any other directive's argument is text: an admonition's or a tab's title, the
# signature Sphinx documents (`.. py:data:: MAX_CONTENT_LENGTH`, `.. function:: url_for(endpoint)`).
_SILENT_ARGUMENT = {"container", "only", "ifconfig", "currentmodule", "py:currentmodule", "module", "py:module",
                    "tabularcolumns", "cssclass", "rst-class", "default-domain", "sectionauthor", "moduleauthor",
                    "codeauthor", "compound", "line-block", "tab-set", "grid", "grid-item", "grid-item-card"}
# Notes whose argument is a version, as Sphinx renders them (`.. versionadded:: 2.0` reads "Added
# in version 2.0."), and the PEPs' banner (`.. superseded:: 292`).
_VERSION_NOTES = {"versionadded": "Added in version {}.", "versionchanged": "Changed in version {}:",
                  "deprecated": "Deprecated since version {}:", "versionremoved": "Removed in version {}:",
                  "superseded": "Superseded by PEP {}."}


class _Parser:
    def __init__(self) -> None:
        self.styles: list[tuple[str, bool]] = []  # adornment styles in order of first use = levels
        self.depth = 0
        self.nesting = 0

    def body(self, lines: list[str], top: bool = False) -> list[Item]:
        if self.nesting >= MAX_NESTING:  # its text, as written: no stack overflow, no quadratic copies
            return [("quote", "\n".join(line.strip() for line in lines if line))]
        self.nesting += 1
        try:
            return self._body(lines, top)
        finally:
            self.nesting -= 1

    def _body(self, lines: list[str], top: bool) -> list[Item]:
        items: list[Item] = []
        i, n = 0, len(lines)
        while i < n:
            line = lines[i]
            if not line:
                i += 1
                continue
            if line[0] == " ":
                block, i = _indented(lines, i)
                items.append(("quote", _astext(self._quote(block))))
                continue
            if top:
                end = self._section(lines, i, items)
                if end:
                    i = end
                    continue
                if _FIELD.match(line) and all(item[0] == "section" for item in items):
                    i = self._docinfo(lines, i, items)
                    continue
            i = self._construct(lines, i, items)
        return items

    def _docinfo(self, lines: list[str], i: int, items: list[Item]) -> int:
        """A field list before any text (around the title) is the document's metadata, not its
        text: docutils' bibliographic fields, Sphinx's `:orphan:` or `:tocdepth: 2`."""
        fields: dict[str, str] = {}
        while i < len(lines) and (m := _FIELD.match(lines[i])):
            block, i = _item_block(lines, i, m.end())
            fields[inline_text(m.group(1)).strip().lower()] = " ".join(_astext(self.body(block)).split())
            while i < len(lines) and not lines[i] and i + 1 < len(lines) and _FIELD.match(lines[i + 1]):
                i += 1
        items.append(("docinfo", fields))
        return i

    def _section(self, lines: list[str], i: int, items: list[Item]) -> int:
        """A section title (or a transition) at lines[i]: the index after it, else 0."""
        line, n = lines[i], len(lines)
        if _ADORNMENT.match(line) and not _BULLET.match(line) and not _EXPLICIT.match(line):
            if i + 2 < n and lines[i + 1] and lines[i + 2].rstrip() and lines[i + 2][0] == line[0] \
                    and _ADORNMENT.match(lines[i + 2]):
                self._title(inline_text(lines[i + 1].strip()).strip(), (line[0], True), items)
                return i + 3
            if len(line) >= _TRANSITION_MIN and (i + 1 == n or not lines[i + 1]):
                return i + 1  # a transition: no text
            return 0
        if i + 1 < n and lines[i + 1] and _ADORNMENT.match(lines[i + 1]) \
                and not (_starts_construct(line) and not _ENUMERATOR.match(line)) \
                and (len(lines[i + 1]) >= 4 or len(lines[i + 1]) >= len(line)):
            self._title(inline_text(line.strip()).strip(), (lines[i + 1][0], False), items)
            return i + 2
        return 0

    def _title(self, title: str, style: tuple[str, bool], items: list[Item]) -> None:
        if style in self.styles:
            level = self.styles.index(style) + 1
            if level > self.depth + 1:
                return  # docutils: "title level inconsistent"; the text stays in the current section
        elif len(self.styles) == self.depth:
            self.styles.append(style)
            level = len(self.styles)
        else:
            return
        self.depth = level
        items.append(("section", level, title))

    def _construct(self, lines: list[str], i: int, items: list[Item]) -> int:
        line, n = lines[i], len(lines)
        if _BULLET.match(line):
            return self._list(lines, i, items, lambda s: s[:1] == line[0] and _BULLET.match(s), "list")
        if (m := _ENUMERATOR.match(line)) and _enumerated_item(lines, i, m):
            shape, first = (m.group(1), m.group(3)), _ordinal(m.group(2))
            expected = [None if first is None else first + 1]

            def same(s: str) -> bool:  # docutils starts a new list where the numbering breaks
                e = _ENUMERATOR.match(s)
                if e is None or (e.group(1), e.group(3)) != shape:
                    return False
                ordinal = _ordinal(e.group(2))
                if None not in (ordinal, expected[0]) and ordinal != expected[0]:
                    return False
                expected[0] = None if ordinal is None else ordinal + 1
                return True

            return self._list(lines, i, items, same, "list")
        if _FIELD.match(line):
            return self._fields(lines, i, items)
        if line.startswith(">>>") and (len(line) == 3 or line[3] == " "):
            end = _paragraph_end(lines, i)
            items.append(("code", "\n".join(lines[i:end])))
            return end
        if line[0] == "|" and (len(line) == 1 or line[1] == " "):
            return self._line_block(lines, i, items)
        if _GRID_TOP.match(line):
            return self._grid_table(lines, i, items)
        if _SIMPLE_BORDER.match(line):
            return self._simple_table(lines, i, items)
        if _EXPLICIT.match(line):
            return self._explicit(lines, i, items)
        if line.startswith("__ ") or line == "__":
            return _indented(lines, i + 1)[1]  # an anonymous target
        if i + 1 < n and lines[i + 1] and lines[i + 1][0] == " ":
            return self._definitions(lines, i, items)
        return self._paragraph(lines, i, items)

    def _paragraph(self, lines: list[str], i: int, items: list[Item]) -> int:
        end = _paragraph_end(lines, i)
        text = "\n".join(lines[i:end])
        if not text.endswith("::"):
            items.append(("paragraph", inline_text(text)))
            return end
        if text.strip() != "::":
            items.append(("paragraph", inline_text(text[:-3].rstrip() if text[-3:-2].isspace() else text[:-1])))
        j = end
        while j < len(lines) and not lines[j]:
            j += 1
        if j < len(lines) and lines[j][0] == " ":
            block, end = _indented(lines, j)
            items.append(("code", "\n".join(block)))
        elif j < len(lines) and _QUOTED.match(lines[j]):  # a quoted literal block: "$ cmd", "> text"
            end = j
            while end < len(lines) and lines[end][:1] == lines[j][0]:
                end += 1
            items.append(("code", "\n".join(lines[j:end])))
        return end

    def _quote(self, lines: list[str]) -> list[Item]:
        inner = self.body(lines)
        last = inner[-1] if inner else None
        if last and last[0] == "paragraph" and re.match(r"(--|---|\u2014) ?\S", last[1]):
            inner[-1] = ("paragraph", re.sub(r"^(--|---|\u2014) ?", "", last[1]))
        return inner

    def _list(self, lines: list[str], i: int, items: list[Item], same, kind: str) -> int:
        """Items from lines[i] on, while `same(line)` says the next one belongs to the list."""
        entries: list[str] = []
        n = len(lines)
        while True:
            m = _BULLET.match(lines[i]) or _ENUMERATOR.match(lines[i])
            block, i = _item_block(lines, i, m.end())
            entries.append(_astext(self.body(block)))
            j = i
            while j < n and not lines[j]:
                j += 1
            if not (j < n and same(lines[j])):
                break
            i = j
        items.append((kind, "\n\n".join(entries)))
        return i

    def _fields(self, lines: list[str], i: int, items: list[Item]) -> int:
        entries: list[str] = []
        n = len(lines)
        while i < n and (m := _FIELD.match(lines[i])):
            block, i = _item_block(lines, i, m.end())
            entries.append(_join([inline_text(m.group(1)), _astext(self.body(block))]))
            j = i
            while j < n and not lines[j]:
                j += 1
            if j < n and _FIELD.match(lines[j]):
                i = j
        items.append(("list", "\n\n".join(entries)))
        return i

    def _definitions(self, lines: list[str], i: int, items: list[Item]) -> int:
        entries: list[str] = []
        n = len(lines)
        while i + 1 < n and lines[i] and lines[i][0] != " " and lines[i + 1] and lines[i + 1][0] == " " \
                and not _EXPLICIT.match(lines[i]):
            term = [inline_text(t) for t in re.split(r" +: +", lines[i].strip())]
            block, i = _indented(lines, i + 1)
            entries.append(_join(term + [_astext(self.body(block))]))
            j = i
            while j < n and not lines[j]:
                j += 1
            if not (j + 1 < n and lines[j + 1] and lines[j + 1][0] == " " and not _starts_construct(lines[j])):
                break
            i = j
        items.append(("list", "\n\n".join(entries)))
        return i

    def _line_block(self, lines: list[str], i: int, items: list[Item]) -> int:
        end = _paragraph_end(lines, i)
        entries: list[str] = []
        for line in lines[i:end]:
            if line[0] == "|":
                entries.append(line[2:].strip())
            elif entries:  # a continuation of the line above
                entries[-1] += " " + line.strip()
        items.append(("paragraph", "\n\n".join(inline_text(e) for e in entries)))
        return end

    def _grid_table(self, lines: list[str], i: int, items: list[Item]) -> int:
        end = _paragraph_end(lines, i)
        from docutils.parsers.rst.tableparser import GridTableParser, TableMarkupError
        from docutils.statemachine import StringList

        try:
            columns, head, body = GridTableParser().parse(StringList(lines[i:end]))
        except TableMarkupError:
            items.append(("table", "\n".join(lines[i:end])))
            return end
        items.append(("table", self._cells(head + body, len(columns))))
        return end

    def _simple_table(self, lines: list[str], i: int, items: list[Item]) -> int:
        n, end = len(lines), i + 1
        while end < n and not (_SIMPLE_BORDER.match(lines[end]) and (end + 1 == n or not lines[end + 1])):
            end += 1
        end = min(end + 1, n)
        from docutils.parsers.rst.tableparser import SimpleTableParser, TableMarkupError
        from docutils.statemachine import StringList

        try:
            columns, head, body = SimpleTableParser().parse(StringList(lines[i:end]))
        except TableMarkupError:
            items.append(("table", "\n".join(lines[i:end])))
            return end
        items.append(("table", self._cells(head + body, len(columns))))
        return end

    def _cells(self, rows, columns: int) -> str:
        # As docutils' astext(): an empty string per column, then every cell, empty ones too.
        return "\n\n".join([""] * columns + [_astext(self.body([line.rstrip() for line in cell[3]]))
                                              for row in rows for cell in row if cell is not None])

    def _explicit(self, lines: list[str], i: int, items: list[Item]) -> int:
        m = _EXPLICIT.match(lines[i])
        rest = lines[i][m.end():]
        _, end = _item_block(lines, i, m.end())
        if not rest or rest[0] == "_" or _SUBSTITUTION_DEF.match(rest):
            return end  # a comment, a hyperlink target or a substitution definition
        # The body is dedented by the marker's width at most, the marker being ".. [label] " or
        # ".. name:: ": content indented under the directive's name loses all of its indent.
        if rest[0] == "[" and (f := re.match(r"\[([^\]\s]+)\]( +|$)", rest)):
            label = f.group(1)
            block, _ = _item_block(lines, i, m.end() + f.end())
            head = [] if label[0] in "#*" else [("other", label)]
            items.append(("walk", head + self.body(block)))
            return end
        d = _DIRECTIVE.match(rest)
        if d is None:
            return end  # a comment
        block, _ = _item_block(lines, i, m.end() + d.end())
        self._directive(d.group(1).lower(), block, items)
        return end

    def _directive(self, name: str, block: list[str], items: list[Item]) -> None:
        if name in ("include", "literalinclude"):  # QA: an include-only page was told to check its markup
            items.append(("warning", f".. {name}:: {block[0].strip()} is not resolved in reStructuredText: the "
                                     "included text is not indexed with this page (index that file itself)"))
        if name in _DROPPED:
            return
        # Arguments run to the first blank line or option; the content follows a blank line.
        j = 0 if block[0] else 1
        while j < len(block) and block[j] and not _OPTION.match(block[j]):
            j += 1
        argument = " ".join(s.strip() for s in block[:j] if s.strip())
        options: dict[str, str] = {}
        while j < len(block) and block[j] and (o := _OPTION.match(block[j].strip())):
            options[o.group(1)] = block[j].strip()[o.end():]
            j += 1
        content = block[j:]
        while content and not content[0]:
            content = content[1:]
        while content and not content[-1]:
            content = content[:-1]
        if name in ("image", "figure") and options.get("alt"):
            items.append(("other", inline_text(options["alt"])))
        if name in _CODE:
            if content:
                items.append(("code", "\n".join(content)))
        elif name == "parsed-literal":
            items.append(("code", inline_text("\n".join(content))))
        elif name == "math":
            items.append(("other", "\n".join(content) or argument))
        elif name == "rubric":
            items.append(("other", inline_text(argument)))
        elif name in _QUOTES:
            items.append(("quote", _astext(self._quote(content))))
        elif name == "list-table":
            items.append(("table", _join([inline_text(argument), _astext(self.body(content))])))
        elif name == "csv-table":
            rows = list(csv.reader([options.get("header", "")] + content, skipinitialspace=True))
            items.append(("table", _join([inline_text(argument)] + [inline_text(c) for r in rows for c in r])))
        elif name == "figure":
            inner = self.body(content)
            if inner and inner[0][0] == "paragraph":
                inner[0] = ("other", inner[0][1])
            items.append(("walk", inner))
        elif name == "table":
            items.append(("table", _join([inline_text(argument), _astext(self.body(content))])))
        elif name in _ADMONITIONS:  # no argument: the first lines are content
            body = [s.strip() for s in block[:j] if s.strip()]
            items.append(("walk", self.body(body + ([""] if body else []) + content)))
        elif name in _VERSION_NOTES and argument:
            version, _, rest = argument.partition(" ")
            items.append(("paragraph", _join([_VERSION_NOTES[name].format(version), inline_text(rest)]).replace("\n\n", " ")))
            items.append(("walk", self.body(content)))
        elif name != "image":
            # Titled containers, and directives docutils does not know (Sphinx's c:function,
            # py:data, tab-item, the PEPs' own banners): their argument and content are the author's text.
            if argument and name not in _SILENT_ARGUMENT:
                items.append(("other", inline_text(argument)))
            items.append(("walk", self.body(content)))


def _starts_construct(line: str) -> bool:
    """Whether the line starts a list, field, table, directive... rather than plain text."""
    return bool(_BULLET.match(line) or _ENUMERATOR.match(line) or _FIELD.match(line) or _EXPLICIT.match(line)
                or _ADORNMENT.match(line) or _GRID_TOP.match(line) or _SIMPLE_BORDER.match(line)
                or line.startswith((">>>", "| ")) or line == "|")


def _enumerated_item(lines: list[str], i: int, m: re.Match) -> bool:
    """"A. Smith wrote" is a paragraph: an enumerator starts a list only if the next line is blank,
    indented, or another item (docutils' rule); "(1" without ")" is text."""
    if m.group(1) and m.group(3) != ")":
        return False
    if i + 1 >= len(lines) or not lines[i + 1] or lines[i + 1][0] == " ":
        return True
    return _ENUMERATOR.match(lines[i + 1]) is not None


def _ordinal(enumerator: str) -> int | None:
    if enumerator.isdigit():
        return int(enumerator)
    return ord(enumerator.lower()) - 96 if len(enumerator) == 1 and enumerator.isalpha() else None


def _paragraph_end(lines: list[str], i: int) -> int:
    n = i + 1
    while n < len(lines) and lines[n] and lines[n][0] != " ":
        n += 1
    return n


def _indented(lines: list[str], start: int) -> tuple[list[str], int]:
    """The block of blank or indented lines from `start`, dedented; and the index after it."""
    end = start
    while end < len(lines) and (not lines[end] or lines[end][0] == " "):
        end += 1
    last = end
    while last > start and not lines[last - 1]:
        last -= 1
    block = lines[start:last]
    indent = min((len(s) - len(s.lstrip(" ")) for s in block if s), default=0)
    return [s[indent:] for s in block], end


def _item_block(lines: list[str], i: int, text_start: int) -> tuple[list[str], int]:
    """A list item, field or explicit-markup block: the text after its marker, then the lines
    indented under it, dedented as docutils does (by the marker's width at most)."""
    end = i + 1
    while end < len(lines) and (not lines[end] or lines[end][0] == " "):
        end += 1
    last = end
    while last > i + 1 and not lines[last - 1]:
        last -= 1
    rest = lines[i + 1:last]
    indent = min([text_start] + [len(s) - len(s.lstrip(" ")) for s in rest if s])
    return [lines[i][text_start:], *(s[indent:] for s in rest)], end


def _join(parts: list[str]) -> str:
    return "\n\n".join(p for p in parts if p)


def _astext(items: list[Item]) -> str:
    return _join([_astext(item[1]) if item[0] == "walk" else item[1] for item in items
                  if item[0] not in ("section", "warning")])


# ---------------------------------------------------------------- inline markup

_START = r"(?<![^\s'\"(\[{<\-/:\u2018\u201c\u2019\u00ab\u00a1\u00bf\u2010-\u2014\u00a0])"
_END = r"(?=[\s'\")\]}>\-/:.,;!?\\\u2019\u201d\u00bb\u2010-\u2014\u00a0]|$)"
_ROLE_NAME = r"[A-Za-z0-9](?:[-_.+:]?[A-Za-z0-9])*"
# Content stops at the next end-string: an unclosed start-string then costs a scan to the next
# delimiter, not to the end of the paragraph (quadratic on hostile text).
_INLINE = re.compile(
    _START + "(?:"
    r"``(?P<literal>\S(?:(?:[^`]|`(?!`))*?\S)??)``" + _END
    + r"|:(?P<role>" + _ROLE_NAME + r"):`(?P<role_text>[^`\s](?:[^`]*?[^`\s\\])??)`" + _END
    + r"|`(?P<interpreted>[^`\s](?:[^`]*?[^`\s\\])??)`(?::(?P<suffix>" + _ROLE_NAME + r"):|(?P<ref>__?))?" + _END
    + r"|\*\*(?P<strong>[^\s*](?:(?:[^*]|\*(?!\*))*?[^\s\\])??)\*\*" + _END
    + r"|\*(?P<emphasis>[^\s*](?:[^*]*?[^\s\\])??)\*" + _END
    + r"|\|(?P<substitution>[^\s|](?:[^|]*?[^\s|])??)\|(?:__?)?" + _END
    + r"|\[(?P<footnote>#[\w.:+-]*|\*|\d+|[^\W\d][\w.:+-]*)\]_" + _END
    + r"|_`(?P<target>[^`\s](?:[^`]*?[^`\s])??)`" + _END
    + ")",
    re.DOTALL,
)
# A reference by name (word_): searched apart, and only where a word ends in "_": trying the
# pattern at every word start took 4/5 of the inline time.
_NAME_CANDIDATE = re.compile(r"[^\W_]__?" + _END)
_NAME_REF = re.compile(_START + r"([^\W_](?:[-_.+:]?[^\W_])*)__?" + _END)
_EMBEDDED = re.compile(r"(.*?)\s*<([^<>]+)>$", re.DOTALL)
_ESCAPE = re.compile(r"\\(\s)|\\(.)", re.DOTALL)
_MARKUP_CHARS = re.compile(r"[`*|_\[\\]")


def inline_text(text: str) -> str:
    """Text as a reader sees it: markup characters gone, a reference's title kept, :pep:`8` as
    "PEP 8"; a role docutils does not know (Sphinx's :func:, :ref:...) as its text."""
    if not _MARKUP_CHARS.search(text):
        return text
    out: list[str] = []
    pos = 0
    for m in _INLINE.finditer(text):
        out.append(_plain(text[pos:m.start()]))
        out.append(_render(m))
        pos = m.end()
    out.append(_plain(text[pos:]))
    return "".join(out)


def _plain(text: str) -> str:
    """Text between inline markup: references by name lose their underscore; escapes resolved."""
    if "_" in text and _NAME_CANDIDATE.search(text):
        text = _NAME_REF.sub(r"\1", text)
    return _unescape(text)


def _unescape(text: str) -> str:
    return _ESCAPE.sub(lambda m: m.group(2) or "", text) if "\\" in text else text


def _render(m: re.Match) -> str:
    if m.group("literal") is not None:
        return m.group("literal")
    if m.group("role") is not None:
        return _role_text(m.group("role"), m.group("role_text"))
    if m.group("interpreted") is not None:
        content = m.group("interpreted")
        if m.group("suffix"):
            return _role_text(m.group("suffix"), content)
        if m.group("ref"):
            embedded = _EMBEDDED.match(content)
            if embedded:
                return _unescape(embedded.group(1) or embedded.group(2))
        return _unescape(content)
    for kind in ("strong", "emphasis", "substitution", "target"):
        if m.group(kind) is not None:
            return _unescape(m.group(kind))
    label = m.group("footnote")
    return "" if label[0] in "#*" else label


def _role_text(role: str, content: str) -> str:
    role = role.lower()
    embedded = _EMBEDDED.match(content)
    if embedded and embedded.group(1):
        return _unescape(embedded.group(1))
    if role in ("pep", "pep-reference", "rfc", "rfc-reference"):
        number = re.match(r"\d+", content)
        if number:
            return f"{role[:3].upper()} {int(number.group())}"
    target = _unescape(content.lstrip("~!."))
    if role in ("doc", "std:doc", "ref", "std:ref", "numref"):
        # Sphinx shows the page's or the section's title; without it, the name or label is the
        # nearest we have (`packaging:core-metadata`, an intersphinx label, reads "core metadata").
        label = target.rsplit(":", 1)[-1].rstrip("/").rsplit("/", 1)[-1]
        target = re.sub(r"[-_]+", " ", label).strip() or target
    return target


def parse_rst_blocks(text: str) -> list[Item]:
    """The document's items in order: ("section", level, title) and (kind, text) blocks, with
    containers flattened. Kinds: paragraph, code, list, table, quote, other; ("docinfo",
    {field: value}) for a field list before any text (its metadata); ("warning", text)."""
    lines = [line.rstrip() for line in text.expandtabs(8).replace("\v", " ").replace("\f", " ").splitlines()]
    flat: list[Item] = []

    def flatten(items: list[Item]) -> None:
        for item in items:
            if item[0] == "walk":
                flatten(item[1])
            else:
                flat.append(item)

    flatten(_Parser().body(lines, top=True))
    return flat
