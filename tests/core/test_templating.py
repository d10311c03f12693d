"""Markdown templating preprocessing: shortcodes and tags leave the text, includes are resolved
inside the collection root, code stays as written, and no chunk is made of markup alone; site
generators' dialects (admonitions, content tabs, MDX components) keep their text, not their markup."""

from __future__ import annotations

import re

import pytest

from dagster_project.core.ingest.chunking import ChunkSettings, chunk_blocks
from dagster_project.core.ingest.hashing import content_hash
from dagster_project.core.ingest.parsing import parse_document
from dagster_project.core.ingest.templating import MarkdownTemplating, includes_fingerprint, render_markdown
from dagster_project.core.ingest.tokens import wordpiece_counter

OPTIONS = MarkdownTemplating()
PAGE = """---
title: Images
description: Resize images with {{< hugo >}} filters.
---

{{< new-in 0.120.0 >}}

Resize an image to fit a box.
{{% glossary-term "resize" %}} keeps the aspect ratio.

{{< img
  src="images/zion.jpg"
  alt="Zion"
  filter="Sepia"
>}}

{{< code-toggle file=hugo >}}
[imaging]
quality = 75
{{< /code-toggle >}}

> [!NOTE]
> Large images take time.

<!--more-->

```go-html-template
{{< img src="x.jpg" >}} is how you call it; {% raw %} stays here
```

Show the call itself with `{{< img >}}` or {{</* img src="a.jpg" */>}}; `<!--more-->` ends a summary.
{% if site.x %}Liquid text{% endif %} and {# a Jinja comment #} end.
{% comment %}hidden{% endcomment %}
"""


def render(text: str, files: dict[str, str] | None = None, path: str = "page.md", options=OPTIONS):
    return render_markdown(path, text, options, (files or {}).get)


def test_shortcodes_and_tags_leave_the_text_but_what_they_enclose_stays():
    text, warnings = render(PAGE)
    body = text.split("---", 2)[2]
    assert warnings == []
    assert "{{< hugo >}}" in text.split("---")[1]  # front matter is the parser's, left as written
    assert "Resize an image to fit a box.\n keeps the aspect ratio." in body  # one paragraph still
    assert "[imaging]\nquality = 75" in body  # a paired shortcode keeps its content
    prose = body.split("```")[0] + body.split("```")[2].replace('{{< img src="a.jpg" >}}', "").replace("`{{< img >}}`", "").replace("`<!--more-->`", "")
    for markup in ("new-in", "src=", ">}}", "code-toggle", "[!NOTE]", "<!--more-->", "{%", "{#", "hidden"):
        assert markup not in prose, markup
    assert '{{< img src="x.jpg" >}} is how you call it; {% raw %} stays here' in body  # fenced code as written
    assert "`{{< img >}}`" in body and "`<!--more-->` ends" in body  # inline code as written
    assert '{{< img src="a.jpg" >}}' in body  # an escaped shortcode is shown as the literal call
    assert "Liquid text and  end." in body


def test_no_chunk_is_made_of_markup_alone():
    text, _ = render(PAGE)
    parsed = parse_document("page.md", text.encode())
    chunks = chunk_blocks(parsed.blocks, ChunkSettings(max_tokens=64, overlap_tokens=8, context_tokens=16),
                          wordpiece_counter())
    for chunk in chunks:
        words = re.sub(r"\{\{.*?\}\}|[{}<>%/=\"`\[\]!-]", " ", chunk.text).split()
        assert words, f"a chunk of markup only: {chunk.text!r}"
    assert not any(c.text.strip() in (">}}", "%}}") for c in chunks)


def test_includes_are_resolved_inside_the_root_with_their_own_templating():
    files = {
        "_common/install.md": "---\n_comment: keep\n---\n\nRun `brew install hugo`.\n\n{{% include \"_common/deep.md\" %}}\n",
        "_common/deep.md": "Deep text {{< new-in 1.0 >}}.\n",
        "_includes/footer.md": "Jekyll footer text.\n",
        "docs/sibling.md": "Sibling text.\n",
    }
    page = ('Intro.\n\n{{% include "/_common/install.md" %}}\n\n{% include footer.md %}\n\n'
            '{% include_relative sibling.md %}\n\nEnd.\n')
    text, warnings = render(page, files, path="docs/page.md")
    assert warnings == []
    assert "Run `brew install hugo`." in text and "Deep text ." in text
    assert "_comment" not in text  # the included file's front matter stays out
    assert "Jekyll footer text." in text and "Sibling text." in text
    assert text.index("Intro.") < text.index("Run `brew") < text.index("Jekyll") < text.index("End.")


def test_an_include_that_escapes_the_root_is_missing_or_loops_is_left_out_and_said():
    files = {"a.md": '{{% include "b.md" %}}\nA text.\n', "b.md": '{{% include "a.md" %}}\nB text.\n'}
    text, warnings = render('{{% include "../../etc/passwd.md" %}}\n\n{{% include "nope.md" %}}\n\n'
                            '{{% include "a.md" %}}\n', files, path="page.md")
    assert "A text." in text and "B text." in text
    assert any("nope.md" in w and "not found" in w for w in warnings)
    assert any("../../etc/passwd.md" in w for w in warnings)
    assert sum("includes itself" in w for w in warnings) == 1


def test_options_keep_and_strip_includes():
    files = {"s.md": "Snippet.\n"}
    page = '{{% include "s.md" %}}\n\nBody {{< x >}}.\n'
    assert render(page, files, options=MarkdownTemplating(templates="keep"))[0] == page
    stripped, warnings = render(page, files, options=MarkdownTemplating(includes="strip"))
    assert "Snippet." not in stripped and "Body ." in stripped and not warnings
    with pytest.raises(ValueError, match="inside the collection root"):
        MarkdownTemplating(include_dirs=["../shared"])


def test_the_includes_fingerprint_follows_the_included_files():
    files = {"s.md": "v1 {{% include \"t.md\" %}}", "t.md": "deep"}
    hashes = {"s.md": b"1", "t.md": b"2"}
    page = 'Text {{% include "s.md" %}}'
    first = includes_fingerprint("p.md", page, OPTIONS, hashes.get, files.get)
    assert first and includes_fingerprint("p.md", "No includes here.", OPTIONS, hashes.get, files.get) == ""
    hashes["t.md"] = b"3"  # a file included by an included file changed
    assert includes_fingerprint("p.md", page, OPTIONS, hashes.get, files.get) != first
    missing = includes_fingerprint("p.md", 'Text {{% include "gone.md" %}}', OPTIONS, hashes.get, files.get)
    files["gone.md"], hashes["gone.md"] = "back", b"4"
    assert includes_fingerprint("p.md", 'Text {{% include "gone.md" %}}', OPTIONS, hashes.get, files.get) != missing


# ---------------------------------------------------------------- site generators' dialects

DIALECTS = '''---
title: Install
---
import Tabs from '@theme/Tabs';
import TabItem from '@theme/TabItem';
import Intro from './_intro.mdx';
export const toc = [{value: 'x', id: 'x'}];

# Installing

<Intro />

:::tip[Pro tip]

Use the heron mirror when you can.

:::

<Tabs groupId="pm">
<TabItem value="npm" label="With npm">

```bash
npm install redux
:::
```

</TabItem>
</Tabs>

{/* a JSX comment */}

<DetailedExplanation
  title="Why immutability?"
>

Because reducers must be pure.

</DetailedExplanation>

!!! note "Technical Details"

    The body of a note is prose, not code.

        an indented code block stays code

    ```python
    import os
    ```

After the note.

=== "Python 3.10+"

    Tab text here.

/// tip | Inspired the walrus API

Use the type hints.

///

```{note}
:class: dropdown
MyST note body, see {ref}`setup`.
```

```{code-block} python
x = 1
```

```{toctree}
install/linux
```

::: fastapi.APIRouter
'''


def blocks_of(path: str, text: str, files: dict[str, str] | None = None):
    rendered, warnings = render(text, files, path=path)
    assert warnings == []
    return [(b.kind, b.text) for b in parse_document(path, rendered.encode()).blocks]


@pytest.mark.parametrize("path", ["docs/install.md", "docs/install.mdx"])
def test_admonitions_tabs_and_mdx_components_keep_their_text_and_lose_their_markup(path):
    blocks = blocks_of(path, DIALECTS, {"docs/_intro.mdx": "import X from 'y'\n\nIntro from a partial.\n"})
    # An indented block is code in Markdown; MDX has no indented code blocks.
    indented = ["an indented code block stays code"]
    prose = [text for kind, text in blocks if kind != "code"]
    assert prose == ["Intro from a partial.", "Pro tip", "Use the heron mirror when you can.", "With npm",
                     "Why immutability?", "Because reducers must be pure.", "Technical Details",
                     "The body of a note is prose, not code.", *(indented if path.endswith(".mdx") else []),
                     "After the note.", "Python 3.10+", "Tab text here.",
                     "Inspired the walrus API", "Use the type hints.", "MyST note body, see `setup`.",
                     "::: fastapi.APIRouter"]  # mkdocstrings' autodoc line is not a container
    code = [text for kind, text in blocks if kind == "code"]
    assert code == ["```bash\nnpm install redux\n:::\n```",  # code as written, a marker in it too
                    *([] if path.endswith(".mdx") else indented), "```python\nimport os\n```",
                    "```{code-block} python\nx = 1\n```"]


def test_mdx_syntax_is_read_only_where_the_page_is_mdx():
    plain = "# Types\n\nA List<String> holds strings.\n\n<Note>\n\nKept.\n\n```js\nimport x from 'y'\n```\n"
    assert blocks_of("types.md", plain)[0] == ("paragraph", "A List<String> holds strings.")
    # A Markdown page that imports a component is MDX (Docusaurus reads every page so).
    assert blocks_of("types.md", "import Note from '@site/Note';\n\n" + plain)[0] == ("paragraph", "A List holds strings.")
    assert ("paragraph", "Kept.") in blocks_of("types.mdx", plain)


def test_an_imported_markdown_component_is_included_and_fingerprinted():
    page = "import Warn from '../components/_warn.mdx';\n\n# Page\n\n<Warn />\n\nBody.\n"
    files = {"components/_warn.mdx": ":::caution\n\nRead the fundamentals first.\n\n:::\n"}
    assert blocks_of("docs/page.md", page, files) == [("paragraph", "Read the fundamentals first."), ("paragraph", "Body.")]
    stripped, _ = render(page, files, path="docs/page.md", options=MarkdownTemplating(includes="strip"))
    assert "fundamentals" not in stripped and "Warn" not in stripped

    def fingerprint(snippet: str) -> str:
        read = {"components/_warn.mdx": snippet}.get
        return includes_fingerprint("docs/page.md", page, OPTIONS, lambda p: content_hash(read(p).encode()), read)

    assert fingerprint("A") != fingerprint("B") != ""


def test_html_blocks_in_markdown_are_their_text():
    page = ('<div class="termy">\n\n```console\n$ pip install x\n```\n\n</div>\n\n'
            '<details><summary>Why so?</summary>\n\nBecause.\n\n</details>\n\n'
            '<table><tr><th>Flag</th><th>Use</th></tr><tr><td>-v</td><td>verbose</td></tr></table>\n\n'
            '<p align="center"><img src="logo.png"></p>\n')
    blocks = [(b.kind, b.text) for b in parse_document("page.md", page.encode()).blocks]
    assert blocks == [("code", "```console\n$ pip install x\n```"), ("other", "Why so?"), ("paragraph", "Because."),
                      ("table", "| Flag | Use |\n|---|---|\n| -v | verbose |")]


def test_heading_attribute_lists_are_not_part_of_the_title():
    page = "# First Steps { #first-steps }\n\nText.\n{: .note}\n\n## Recap {#recap .wide}\n\nUse {name} here.\n\n### Using {name}\n"
    rendered, _ = render(page)
    parsed = parse_document("page.md", rendered.encode())
    assert [h["title"] for h in parsed.headings] == ["First Steps", "Recap", "Using {name}"]
    assert parsed.title == "First Steps"
    assert [(b.text, b.heading_path) for b in parsed.blocks] == [("Text.", ["First Steps"]),
                                                                  ("Use {name} here.", ["First Steps", "Recap"])]


def test_mkdocs_snippets_are_included_like_any_include():
    files = {"snippets/licence.md": "Shared under the walrus licence.\n"}
    page = 'Intro.\n\n--8<-- "snippets/licence.md"\n\nShow it with:\n\n;--8<-- "snippets/licence.md"\n\n--8<-- "gone.md"\n'
    text, warnings = render(page, files)
    assert "Shared under the walrus licence." in text
    assert '--8<-- "snippets/licence.md"' in text  # the escaped line, shown as written without its `;`
    assert ';--8<--' not in text and text.count("--8<--") == 1
    assert any("gone.md" in w and "not found" in w for w in warnings)
    assert includes_fingerprint("page.md", page, OPTIONS, lambda p: content_hash(files[p].encode()) if p in files else None,
                                files.get) != ""
    assert "walrus" not in render(page, files, options=MarkdownTemplating(includes="strip"))[0]


def test_inline_html_in_markdown_prose_is_its_text_and_code_spans_stay():
    page = ('Built on <abbr title="Asynchronous Server Gateway Interface">ASGI</abbr>; press <kbd>Ctrl</kbd>+<kbd>C</kbd>, '
            'see <a href="https://x.org">the docs</a> or <https://y.org>.\n'
            'Keep `<div>` in code, and List<String> too. <img src="l.png" alt="The logo">line<br>break.\n')
    assert [(b.kind, b.text) for b in parse_document("page.md", page.encode()).blocks] == [(
        "paragraph", "Built on ASGI (Asynchronous Server Gateway Interface); press Ctrl+C, see the docs or "
                     "<https://y.org>.\nKeep `<div>` in code, and List<String> too. The logo line break.")]


# ---------------------------------------------------------------- QA round 5 (site dialects, formats)

def test_inline_code_in_an_mdx_page_stays_as_written():
    page = ("import Tabs from '@theme/Tabs';\n\nRender a `<Provider store={store}>` around `<App />`, "
            "not `{/* x */}`; <Tabs>tabs</Tabs> go.\n")
    assert blocks_of("faq.md", page) == [
        ("paragraph", "Render a `<Provider store={store}>` around `<App />`, not `{/* x */}`; tabs go.")]


def test_container_markers_inside_list_items_go_and_their_titles_stay():
    page = ("1. Install the package.\n\n    !!! note\n        The body mentions the cobalt lighthouse.\n\n"
            "2. Configure it.\n\n    /// tip | Indented block\n    Body about the amber tram.\n    ///\n\n"
            "3. Run it.\n\n    :::tip\n    Tip about the juniper kite.\n    :::\n\n"
            ':::note{title="Attr title"}\n\nAttributed.\n\n:::\n')
    blocks = blocks_of("list.md", page)
    text = "\n".join(t for _, t in blocks)
    for marker in ("!!!", "///", ":::", "{title"):
        assert marker not in text, marker
    for words in ("cobalt lighthouse", "Indented block", "amber tram", "juniper kite", "Attr title", "Attributed."):
        assert words in text, words


def test_what_includes_add_to_a_page_is_bounded_and_non_markdown_snippets_are_named():
    from dagster_project.core.ingest.templating import MAX_INCLUDED_CHARS

    big = "Walrus text. " * 20_000  # 260 KB
    page = "import Big from './_big.mdx';\n\n" + "<Big />\n\n" * 100
    text, warnings = render(page, {"_big.mdx": big}, path="page.mdx")
    assert len(text) <= MAX_INCLUDED_CHARS + len(big) + len(page)  # 26 MB before
    assert any("over 4,000,000 characters" in w for w in warnings)
    _, warnings = render('--8<-- "snips/app.py"\n\n--8<-- "snips/usage.md:3:9"\n', {"snips/app.py": "x = 1\n"})
    assert len(warnings) == 2 and all("only Markdown files" in w for w in warnings), warnings


def test_mdbook_and_markdown_include_includes_and_fastapi_code_lines():
    files = {"guide/_shared.md": "Walruses share this paragraph.\n", "common/licence.md": "Under the walrus licence.\n"}
    page = ("# Guide\n\n{{#title The walrus guide}}\n\nIntro.\n\n{{#include _shared.md}}\n\n{!common/licence.md!}\n\n"
            "{* ../../docs_src/app/tutorial001.py hl[3:4] *}\n\nAfter the code.\n\n"
            "```rust\n{{#include ../listings/main.rs}}\n```\n\n"
            "{{#playground example.rs}}\n\n{{#include missing.md}}\n")
    text, warnings = render(page, files, path="guide/page.md")
    assert "Walruses share this paragraph." in text  # mdBook: relative to the page's folder
    assert "Under the walrus licence." in text  # markdown-include: from the root
    assert "{{#title" not in text and "{{#playground" not in text and "{!" not in text
    assert "{*" not in text and "docs_src" not in text and "After the code." in text
    assert "{{#include ../listings/main.rs}}" in text  # inside a code fence: as written
    assert any("missing.md" in w and "not found" in w for w in warnings)
    fingerprint = includes_fingerprint("guide/page.md", page, OPTIONS,
                                       lambda p: content_hash(files[p].encode()) if p in files else None, files.get)
    changed = {**files, "guide/_shared.md": "Walruses changed it.\n"}
    assert fingerprint and fingerprint != includes_fingerprint(
        "guide/page.md", page, OPTIONS, lambda p: content_hash(changed[p].encode()) if p in changed else None, changed.get)
    # {! and {* inside prose that is not an include stay, and so does inline code
    kept, _ = render("Use `{{#include x.md}}` and `{!x.md!}` to include; a {* star *} inside a line stays.\n")
    assert "`{{#include x.md}}`" in kept and "`{!x.md!}`" in kept and "{* star *}" in kept


def test_vitepress_containers_lose_their_markers_and_mkdocstrings_lines_stay():
    page = ("Intro.\n\n::: tip Pro tip\nUse the cache.\n:::\n\n::: details Click to see\nHidden text.\n:::\n\n"
            "::: code-group\n```js [config.js]\nx = 1\n```\n:::\n\n::: WARNING\nCareful.\n:::\n\n"
            "::: my_pkg.module\n\n::: tipster\n")
    text, _ = render(page)
    assert ":::" not in text.replace("::: my_pkg.module", "").replace("::: tipster", "")
    assert "Pro tip\nUse the cache." in text and "Click to see\nHidden text." in text and "Careful." in text
    assert "```js [config.js]\nx = 1\n```" in text
    assert "::: my_pkg.module" in text and "::: tipster" in text  # mkdocstrings' autodoc lines are not containers


def test_vitepress_includes_toc_and_code_imports():
    files = {"guide/parts/basics.md": "Basics of the walrus.\n", "shared/footer.md": "Walrus footer.\n"}
    page = ("# Guide\n\n[[toc]]\n\n<!--@include: ./parts/basics.md-->\n\n<!--@include: @/shared/footer.md-->\n\n"
            "<<< @/snippets/snippet.js{2}\n\n<!-- a comment -->After.\n\n<!--@include: ./parts/gone.md-->\n")
    text, warnings = render(page, files, path="guide/page.md")
    assert "Basics of the walrus." in text and "Walrus footer." in text and "After." in text
    assert "[[toc]]" not in text and "<<<" not in text and "comment" not in text and "@include" not in text
    assert any("gone.md" in w for w in warnings)
    fingerprint = includes_fingerprint("guide/page.md", page, OPTIONS,
                                       lambda p: content_hash(files[p].encode()) if p in files else None, files.get)
    assert fingerprint
    assert "Basics" not in render(page, files, path="guide/page.md", options=MarkdownTemplating(includes="strip"))[0]


def test_an_included_file_is_rendered_once_by_its_own_rules():
    # Its escaped shortcode shows as the literal call; the including page does not strip it again
    # (a snippet's text went through the page's shortcode pass too).
    files = {"_common/call.md": "Call it as {{</* img src=\"a.jpg\" */>}} in a page.\n"}
    for include in ('{{% include "/_common/call.md" %}}', '--8<-- "_common/call.md"'):
        text, _ = render(f"Intro.\n\n{include}\n\nEnd.\n", files)
        assert '{{< img src="a.jpg" >}}' in text and "End." in text, include


def test_mdx_components_show_their_text_attributes_and_long_exports_leave():
    page = ("import Shared from '/snippets/shared.mdx';\n\n"
            "export const Chart = () => {\n  const data = [1, 2];\n\n  return <div>{data}</div>;\n};\n\n"
            "<ParamField query=\"limit\" type=\"integer\" default=\"10\">Most results to return.</ParamField>\n\n"
            "<LinkCard title=\"Guides\" description=\"Learn the walrus basics\" href=\"/guides\" />\n\n"
            "<Card icon={<svg><path d={{a: {b: 1}}} /></svg>} title=\"Deep\">Card body.</Card>\n\n"
            "Use ```` ```http ```` fences. <Update label=\"v2\">Changed.</Update>\n\n<Shared />\n")
    text, warnings = render(page, {"snippets/shared.mdx": "Shared walrus text.\n"}, path="docs/api/page.mdx")
    assert warnings == []
    assert "const data" not in text and "return <div>" not in text and "Chart" not in text
    assert "limit integer 10" in text and "Most results to return." in text
    assert "Guides Learn the walrus basics" in text and "Deep" in text and "Card body." in text
    assert "<" not in text.replace("```` ```http ````", "") and "v2" in text and "Changed." in text
    assert "Shared walrus text." in text  # '/snippets/...' is from the root, not the page's folder


def test_jekyll_highlight_blocks_are_code_and_raw_bodies_stay_as_written():
    page = ("Intro.\n\n{% highlight diff %}{% raw %}\n- {{ site.baseurl }}/old\n+ {% post_url 2018-03-20-hello %}\n"
            "{% endraw %}{% endhighlight %}\n\nShow {% raw %}{% include file.ext %}{% endraw %} to include; "
            "{% if x %}kept{% endif %}.\n\n{% highlight ruby linenos %}\ndef x; end\n{% endhighlight %}\n")
    text, _ = render(page)
    assert "```diff\n- {{ site.baseurl }}/old\n+ {% post_url 2018-03-20-hello %}\n```" in text
    assert "Show {% include file.ext %} to include; kept." in text and "```ruby\ndef x; end\n```" in text
    blocks = [(b.kind, b.text) for b in parse_document("page.md", text.encode()).blocks]
    assert [kind for kind, _ in blocks] == ["paragraph", "code", "paragraph", "code"]
