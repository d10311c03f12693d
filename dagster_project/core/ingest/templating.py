"""Markdown preprocessing for templating syntax: Hugo shortcodes, Liquid/Jekyll and Jinja tags,
HTML comments and GitHub alert markers are stripped (a paired shortcode keeps what it encloses),
and includes (those tags, MkDocs' `--8<--` snippets and markdown-include's `{!file!}`, mdBook's
`{{#include file}}`, VitePress' `<!--@include: file-->`) are resolved within the collection root,
before the Markdown parser sees the file.
Site generators' dialects (admonitions, content tabs, MDX) are unwrapped first (dialects.py)."""

from __future__ import annotations

import posixpath
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .dialects import REMOVED, drop_marked_lines, is_mdx, mdx_imports, strip_mdx, unwrap_containers
from .hashing import content_hash

# Bump when preprocessing changes what a file yields: every Markdown file is parsed again
# (v2: dialects.py; v3: mdBook and markdown-include includes, FastAPI's code-include lines,
# VitePress `::: tip` containers, `<!--@include: file-->`, `[[toc]]` and `<<< code` lines; v4: MDX
# components' text attributes, exports over blank lines, root-relative imports; Jekyll's highlight
# blocks as code and raw bodies as written).
TEMPLATING_VERSION = "templating-v4"
MARKDOWN_SUFFIXES = (".md", ".markdown", ".mdx")
MAX_INCLUDE_DEPTH = 8  # nested includes deeper than this are left out (and said so): a cycle ends here
MAX_INCLUDES = 500  # per page: a hostile page cannot include a big file a million times
# Per page, what its includes may add (a 210 KB partial included 500 times made a 5 KB page 105 MB).
MAX_INCLUDED_CHARS = 4_000_000
MAX_WARNINGS = 10
MAX_TAG_CHARS = 4000  # a shortcode's arguments may span lines, but a stray `{{<` must not eat the file


class MarkdownTemplating(BaseModel):
    """Per collection (corpus.yaml `markdown:`): what to do with templating syntax in Markdown."""

    model_config = ConfigDict(extra="forbid")

    # strip: shortcode and template tags leave the text (a paired shortcode keeps its content),
    # and so do the markers of admonitions, content tabs and MDX components (dialects.py);
    # keep: the file is indexed as written.
    templates: Literal["strip", "keep"] = "strip"
    # resolve: an include is replaced by the included file (from the collection root, Markdown
    # only, its own templating processed); strip: the include tag is dropped like any other tag.
    includes: Literal["resolve", "strip"] = "resolve"
    # Shortcode / tag names that include another file (Hugo `{{% include "x.md" %}}`, Jekyll
    # `{% include x.md %}` and `{% include_relative x.md %}`, `{{< readfile file="x.md" >}}`).
    include_tags: list[str] = Field(default_factory=lambda: ["include", "include_relative", "readfile"])
    # Folders (relative to the collection root) searched for an include's file, in order.
    include_dirs: list[str] = Field(default_factory=lambda: ["", "_includes"])

    @field_validator("include_dirs")
    @classmethod
    def _inside_root(cls, dirs: list[str]) -> list[str]:
        for folder in dirs:
            if posixpath.isabs(folder) or ".." in folder.split("/"):
                raise ValueError(f"include_dirs entry {folder!r} must be a folder inside the collection root")
        return [folder.strip("/") for folder in dirs]


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_FRONT_MATTER = re.compile(r"\A(?:---|\+\+\+)[ \t]*\r?\n")
# One pass over the text: the first alternatives are spans to keep as written (inline code, an
# escaped shortcode), then the syntax to strip. Hugo before Liquid: `{{%` is not `{%`.
# Argument runs exclude braces: every attempt to match stops at the next brace, so a hostile
# file of `{{<{{<...` costs linear time.
_SYNTAX = re.compile(
    (r"(?P<code>(?P<ticks>`{1,3})[^`\n]+?(?P=ticks))"
     r"|\{\{(?P<esc>[<%])/\*(?P<escaped>[^{}]{0,N}?)\*/[>%]\}\}"
     r"|\{\{[<%]-?[ \t\n]*(?P<close>/)?[ \t]*(?P<hugo>[\w./-]+)(?P<hargs>[^{}]{0,N}?)/?[ \t\n]*-?[>%]\}\}"
     r"|(?<!\{)\{%-?[ \t]*(?P<liquid>\w+)(?P<largs>[^{}]{0,N}?)-?%\}"
     r"|\{#[^{}]{0,N}?#\}"
     # mdBook's `{{#include file.md}}`, `{{#title ...}}`, `{{#playground x.rs}}`
     r"|\{\{#(?P<mdbook>include|rustdoc_include|playground|title)\b(?P<margs>[^{}]{0,N}?)\}\}"
     # markdown-include (MkDocs, Python-Markdown): `{!file.md!}`
     r"|\{!(?P<bang>[^{}!\n]{1,N})!\}"
     # FastAPI's docs: `{* ../../docs_src/app.py hl[3] *}` on a line of its own shows code kept
     # outside the docs: nothing of it is in the page
     r"|(?<![^\n])[ \t]*\{\*[^{}\n]{0,N}?\*\}(?=[ \t]*(?:\n|$))"
     # VitePress / VuePress: `[[toc]]`, and `<<< @/snippets/x.js{2}` (a code file's import) on a line of its own
     r"|(?<![^\n])[ \t]*(?:\[\[toc\]\]|<<<[ \t]+[^\s<][^\n]{0,N}?)(?=[ \t]*(?:\n|$))").replace("N", str(MAX_TAG_CHARS)),
)
# VitePress: `<!--@include: ./parts/basics.md-->` (relative to the page; `@/` is the root)
_VITEPRESS_INCLUDE = re.compile(r"<!--[ \t]*@include:[ \t]*(?P<target>[^\s>]{1,1000}?)[ \t]*-->")
# Comment pairs (Liquid, HTML), found by scanning forward once: a regex over an unclosed comment
# would rescan the rest of the file from every opener.
_COMMENTS = ((re.compile(r"\{%-?[ \t]*comment[ \t]*-?%\}"), re.compile(r"\{%-?[ \t]*endcomment[ \t]*-?%\}")),
             (re.compile(r"<!--"), re.compile(r"-->")))
# Jekyll: `{% highlight ruby %}` ... `{% endhighlight %}` is a code block (a fence here), and what
# `{% raw %}` ... `{% endraw %}` encloses is shown as written, its Liquid too.
_HIGHLIGHT = (re.compile(r"^[ \t]*\{%-?[ \t]*highlight[ \t]+([\w+#.-]+)[^%\n]{0,200}?-?%\}[ \t]*"
                         r"(?:\{%-?[ \t]*raw[ \t]*-?%\})?[ \t]*\n?", re.MULTILINE),
              re.compile(r"\n?[ \t]*(?:\{%-?[ \t]*endraw[ \t]*-?%\})?[ \t]*\{%-?[ \t]*endhighlight[ \t]*-?%\}[ \t]*$",
                         re.MULTILINE))
_RAW = (re.compile(r"\{%-?[ \t]*raw[ \t]*-?%\}"), re.compile(r"\{%-?[ \t]*endraw[ \t]*-?%\}"))
_KEPT = "\x04"  # where a `{% raw %}` body waits, as written, while the page's markup is stripped
_ALERT = re.compile(r"^([ \t]*>[ \t]*)\[!(?:NOTE|TIP|IMPORTANT|WARNING|CAUTION)\][ \t]*$", re.MULTILINE | re.IGNORECASE)
# pymdownx.snippets (MkDocs): `--8<-- "file.md"` on a line of its own includes the file;
# `;--8<--` shows the line itself.
_SNIPPET = re.compile(r"""^[ \t]*(?P<escaped>;)?--8<--[ \t]+(?P<quote>["'])(?P<target>[^"'\n]+)(?P=quote)[ \t]*$""", re.MULTILINE)
_QUOTED = re.compile(r"""(?:\bfile\s*=\s*)?["']([^"'\n]+)["']|(\S+)""")
_INCLUDED = re.compile("\x02(\\d+)\x02")  # where the Nth MDX component imported from a Markdown file goes


def _split_front_matter(text: str) -> tuple[str, str]:
    """(front matter with its fences, body): templating in the header is the parser's business."""
    if not _FRONT_MATTER.match(text):
        return "", text
    fence = text[:3]
    closers = ("---", "...") if fence == "---" else ("+++",)
    position = text.index("\n") + 1
    while position < len(text):
        end = text.find("\n", position)
        line = text[position:] if end < 0 else text[position:end]
        if line.strip() in closers:
            cut = len(text) if end < 0 else end + 1
            return text[:cut], text[cut:]
        if end < 0:
            break
        position = end + 1
    return "", text


def _segments(body: str) -> list[tuple[bool, str]]:
    """(is fenced code, text) runs: code fences are examples, kept exactly as written."""
    return _scan_fences(body)[0]


def open_fence(body: str) -> str | None:
    """The marker of a code fence `body` leaves open at its end (```` ``` ````, `~~~`...), or None."""
    return _scan_fences(body)[1]


def _scan_fences(body: str) -> tuple[list[tuple[bool, str]], str | None]:
    out: list[tuple[bool, str]] = []
    current: list[str] = []
    fence = None
    for line in body.splitlines(keepends=True):
        match = _FENCE.match(line)
        if fence is None and match:
            if current:
                out.append((False, "".join(current)))
            current, fence = [line], match.group(1)
        elif fence is not None and match and match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence) \
                and not line.strip()[len(match.group(1)):].strip():
            current.append(line)
            out.append((True, "".join(current)))
            current, fence = [], None
        else:
            current.append(line)
    if current:
        out.append((fence is not None, "".join(current)))
    return out, fence


def include_target(tag: str, args: str) -> str | None:
    """The file an include tag names: its first quoted argument, `file="..."`, or first word."""
    match = _QUOTED.search(args.strip())
    if match is None:
        return None
    target = match.group(1) or match.group(2)
    return target if target and "{{" not in target and "{%" not in target else None


def candidate_paths(target: str, including: str, tag: str, options: MarkdownTemplating) -> list[str]:
    """Where an include may live, relative to the collection root, best first; never outside it."""
    target = target.replace("\\", "/")
    if tag == "include_relative":
        bases = [posixpath.dirname(including)]
    elif target.startswith("/"):
        bases = [""]
    else:
        bases = [*options.include_dirs, posixpath.dirname(including)]
    out = []
    for base in bases:
        path = posixpath.normpath(posixpath.join(base, target.lstrip("/")))
        if path not in out and not path.startswith("../") and path not in ("..", "."):
            out.append(path)
    return out


Reader = Callable[[str], "str | None"]  # collection-relative path -> its text, None when absent


def render_markdown(path: str, text: str, options: MarkdownTemplating, read: Reader,
                    refusal: Callable[[str], str | None] = lambda _: None) -> tuple[str, list[str]]:
    """The file's text with templating stripped and includes resolved; warnings say what could
    not be included (`refusal(path)`: why a file that exists is not read, if it is not). Front
    matter and fenced code are left as written."""
    if options.templates == "keep":
        return text, []
    header, body = _split_front_matter(text)
    state = _Render(options, read, refusal)
    rendered = header + _render_body(path, body, state, (path,))
    return rendered, state.warnings


@dataclass
class _Render:
    """One page's rendering: its options, its reader, what it has included and said so far."""

    options: MarkdownTemplating
    read: Reader
    refusal: Callable[[str], str | None]
    includes: int = 0
    included_chars: int = 0
    warnings: list[str] = field(default_factory=list)

    def warn(self, message: str) -> None:
        if message not in self.warnings and len(self.warnings) < MAX_WARNINGS:
            self.warnings.append(message)


def _render_body(path: str, body: str, state: _Render, chain: tuple[str, ...]) -> str:
    if "highlight" in body:
        body = _highlight_fences(body)
    segments = _segments(unwrap_containers(body))
    prose = "".join(segment for is_code, segment in segments if not is_code)
    mdx = is_mdx(path, prose)
    imports = mdx_imports(prose) if mdx else {}
    # Includes are resolved after this page's own markup is stripped: an included file is rendered
    # once, by its own rules (its escaped `{{</* x */>}}` shows, it is not stripped again here).
    deferred: list[tuple[str, str]] = []

    def defer(tag: str, args: str) -> str:
        deferred.append((tag, args))
        return f"\x02{len(deferred) - 1}\x02"

    parts = []
    for is_code, segment in segments:
        if is_code:
            parts.append(segment)
            continue
        if mdx:
            # An import from '/snippets/x.mdx' is from the docs root (Mintlify), else from the page's folder.
            segment = strip_mdx(segment, imports, (lambda target: defer(
                "include" if target.startswith("/") else "include_relative", f'"{target}"'))
                if state.options.includes == "resolve" else None)
        raw: list[str] = []
        if "raw" in segment and _KEPT not in segment:
            segment = _hold_pairs(segment, *_RAW, raw)
        segment = _VITEPRESS_INCLUDE.sub(lambda m: _vitepress_include(m, state, defer), segment)
        for opener, closer in _COMMENTS:
            segment = _strip_pairs(segment, opener, closer)
        segment = _ALERT.sub(r"\1", segment)
        segment = _SNIPPET.sub(lambda m: _snippet(m, state, defer), segment)
        segment = _SYNTAX.sub(lambda m: _replace(m, state, defer), segment)
        if raw:
            segment = re.sub(f"{_KEPT}(\\d+){_KEPT}", lambda m: raw[int(m.group(1))], segment)
        parts.append(drop_marked_lines(segment))
    text = "".join(parts)
    if deferred:
        text = drop_marked_lines(_INCLUDED.sub(
            lambda m: _include(*deferred[int(m.group(1))], path, state, chain)
            if int(m.group(1)) < len(deferred) else m.group(0), text))  # a page's own \x02 stays
    return text


def _highlight_fences(body: str) -> str:
    """Jekyll's highlight blocks as code fences (one forward scan: an unclosed one stays)."""
    parts, position = [], 0
    opener, closer = _HIGHLIGHT
    while (start := opener.search(body, position)) is not None:
        end = closer.search(body, start.end())
        if end is None:
            break
        parts += [body[position:start.start()], f"```{start.group(1)}\n{body[start.end():end.start()]}\n```"]
        position = end.end()
    return "".join(parts) + body[position:]


def _hold_pairs(text: str, opener: re.Pattern, closer: re.Pattern, held: list[str]) -> str:
    """`text` with what each opener ... closer pair encloses held aside (numbered placeholders),
    the markers gone; an opener never closed stays as it is."""
    parts, position = [], 0
    while (start := opener.search(text, position)) is not None:
        end = closer.search(text, start.end())
        if end is None:
            break
        held.append(text[start.end():end.start()])
        parts += [text[position:start.start()], f"{_KEPT}{len(held) - 1}{_KEPT}"]
        position = end.end()
    return "".join(parts) + text[position:]


def _strip_pairs(text: str, opener: re.Pattern, closer: re.Pattern) -> str:
    parts, position = [], 0
    while (start := opener.search(text, position)) is not None:
        line_start = max(text.rfind("\n", 0, start.start()) + 1, start.start() - 1000)
        if text.count("`", line_start, start.start()) % 2:  # inside inline code: shown, not hidden
            parts.append(text[position:start.end()])
            position = start.end()
            continue
        end = closer.search(text, start.end())
        if end is None:
            break
        parts += [text[position:start.start()], REMOVED]
        position = end.end()
    return "".join(parts) + text[position:]


Defer = Callable[[str, str], str]  # (include tag, its arguments) -> where the included text goes


def _replace(match: re.Match, state: _Render, defer: Defer) -> str:
    if match.group("code"):
        return match.group(0)
    if match.group("esc"):  # {{</* x */>}} is how a page shows a literal shortcode
        delimiter = match.group("esc")
        closing = ">" if delimiter == "<" else "%"
        return "{{" + delimiter + match.group("escaped") + closing + "}}"
    resolve = state.options.includes == "resolve"
    if match.group("mdbook") == "include" and resolve:  # mdBook's paths are the page's own
        return defer("include_relative", match.group("margs"))
    if match.group("bang") and resolve:
        return defer("include", f'"{match.group("bang").strip()}"')
    tag = match.group("hugo") or match.group("liquid")
    args = match.group("hargs") if match.group("hugo") else match.group("largs")
    if tag and not match.group("close") and tag in state.options.include_tags and resolve:
        return defer(tag, args or "")
    return REMOVED


def _snippet(match: re.Match, state: _Render, defer: Defer) -> str:
    if match.group("escaped"):
        return match.group(0).replace(";--8<--", "--8<--", 1)
    if state.options.includes != "resolve":
        return REMOVED
    return defer("include", f'"{match.group("target")}"')


def _vitepress_include(match: re.Match, state: _Render, defer: Defer) -> str:
    if state.options.includes != "resolve":
        return REMOVED
    target = match.group("target")
    if target.startswith("@/"):
        return defer("include", f'"{target[1:]}"')
    return defer("include_relative", f'"{target}"')


def _include(tag: str, args: str, path: str, state: _Render, chain: tuple[str, ...]) -> str:
    target = include_target(tag, args)
    if target is None:
        return REMOVED
    state.includes += 1
    if state.includes > MAX_INCLUDES:
        state.warn(f"over {MAX_INCLUDES} includes: the rest are left out")
        return REMOVED
    options = state.options
    for candidate in candidate_paths(target, path, tag, options):
        if not candidate.endswith(MARKDOWN_SUFFIXES):
            continue
        text = state.read(candidate)
        if text is None:
            if (why := state.refusal(candidate)) is not None:  # QA: a refused link was "not found"
                state.warn(f"include {target!r} left out: {candidate} is {why}")
                return REMOVED
            continue
        if candidate in chain or len(chain) > MAX_INCLUDE_DEPTH:
            state.warn(f"include {target!r} left out: it includes itself (through {' -> '.join(chain)})"
                            if candidate in chain else f"include {target!r} left out: nested over "
                            f"{MAX_INCLUDE_DEPTH} levels")
            return REMOVED
        _, body = _split_front_matter(text)
        if state.included_chars + len(body) > MAX_INCLUDED_CHARS:
            state.warn(f"include {target!r} left out: the page's includes add over {MAX_INCLUDED_CHARS:,} characters")
            return REMOVED
        included = _render_body(candidate, body, state, (*chain, candidate))
        state.included_chars += len(included)
        if state.included_chars > MAX_INCLUDED_CHARS:
            state.warn(f"include {target!r} left out: the page's includes add over {MAX_INCLUDED_CHARS:,} characters")
            return REMOVED
        return f"{REMOVED}\n\n{included.strip()}\n\n{REMOVED}"
    if not target.endswith(MARKDOWN_SUFFIXES):
        state.warn(f"include {target!r} left out: only Markdown files ({', '.join(MARKDOWN_SUFFIXES)}) are "
                   "included; a snippet's section or line range (`file.md:name`, `file.md:3:9`) is not supported")
        return REMOVED
    state.warn(f"include {target!r} not found in the collection (looked in "
                    f"{', '.join(candidate_paths(target, path, tag, options)) or 'nowhere inside the root'}): "
                    "its text is left out; add the file or set `markdown: {includes: strip}`")
    return REMOVED


def includes_fingerprint(path: str, text: str, options: MarkdownTemplating, read_hash: Callable[[str], bytes | None],
                         read: Reader) -> str:
    """A digest of every file this one includes (transitively, found or not): a file whose
    includes changed is parsed again though its own bytes did not change. '' without includes."""
    if options.templates == "keep" or options.includes != "resolve" or not _may_include(text, options):
        return ""
    seen: list[str] = []

    def record(candidate: str) -> str | None:
        seen.append(candidate)
        return read(candidate)

    render_markdown(path, text, options, record)
    if not seen:
        return ""
    digest = b"".join(c.encode() + b"\0" + (read_hash(c) or b"-") for c in sorted(set(seen)))
    return content_hash(digest).hex()[:16]


def _may_include(text: str, options: MarkdownTemplating) -> bool:
    return (any(tag in text for tag in options.include_tags) or "--8<--" in text or "{{#include" in text
            or "{!" in text or "@include:" in text or bool(mdx_imports(text)))
