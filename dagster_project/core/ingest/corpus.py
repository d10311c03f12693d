"""The corpus manifest (corpus.yaml) and the scan of each collection's files.

A scan never raises for a bad file: it returns the file with the reason it cannot be read,
so one broken file never stops a collection."""

from __future__ import annotations

import functools
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from .hashing import content_hash
from .templating import MarkdownTemplating

EmbedMode = Literal["full", "metadata_only", "skip"]
# Tenant names become role names (refinery_tenant_<name>): short, lower-case, unquoted.
TENANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
DEFAULT_TENANT = "public"  # the tenant of a collection whose entry names none
DEFAULT_INCLUDE = ["**/*.md", "**/*.markdown", "**/*.rst", "**/*.txt", "**/*.html", "**/*.htm",
                   "**/*.pdf", "**/*.docx", "**/*.pptx"]

# Metadata keys (front matter, <meta> tags, header fields) whose text describes the whole document:
# indexed and embedded as the document's own passage, so a page that says what it is only in
# its front matter is still found.
DEFAULT_DOCUMENT_FIELDS = ["description", "summary", "abstract", "subtitle", "excerpt", "keywords", "tags"]


# Collection settings added after the first release (see Collection.fingerprint).
ADDED_SETTINGS = ("text_search_config", "best_of", "tenant", "document_fields", "markdown")


class ManifestError(ValueError):
    """The manifest is unusable; nothing has been written. The message names the problem."""


class DocumentDefaults(BaseModel):
    model_config = ConfigDict(extra="forbid")

    category: str | None = None
    doc_type: str | None = None
    status: str | None = None
    embed_mode: EmbedMode = "full"
    pricing_sensitive: bool = False


class BestOf(BaseModel):
    """A collection's `best_of:` entry: documents whose refinement matters get N candidates from
    the model and the best valid one is kept (core/refine/best_of.py sizes N)."""

    model_config = ConfigDict(extra="forbid")

    include: list[str] = Field(default_factory=lambda: ["**"])  # documents whose refinement matters (path globs)
    target: int = Field(1, ge=1, le=5)  # valid candidates wanted per document
    confidence: float = Field(0.9, gt=0.5, lt=1)  # that the target is reached, given the observed rate
    min_samples: int = Field(20, ge=2)  # documents judged best-of before the observed rate is trusted
    default_candidates: int = Field(3, ge=1)  # N until then
    max_candidates: int = Field(6, ge=1, le=16)  # N never exceeds this (cost bound)
    window: int = Field(500, ge=2)  # the most recent documents the rate is measured over

    @model_validator(mode="after")
    def _bounds(self) -> BestOf:
        if not self.target <= self.default_candidates <= self.max_candidates:
            raise ValueError(f"best_of needs target ({self.target}) <= default_candidates "
                             f"({self.default_candidates}) <= max_candidates ({self.max_candidates})")
        return self

    def covers(self, path: str) -> bool:
        return matches_globs(path, self.include)


class Collection(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    root: Path
    include: list[str] = Field(default_factory=lambda: list(DEFAULT_INCLUDE))
    exclude: list[str] = Field(default_factory=list)
    defaults: DocumentDefaults = Field(default_factory=DocumentDefaults)
    # A symlink out of the root would publish whatever it points at (/etc/shadow): only by choice.
    follow_external_symlinks: bool = False
    # PostgreSQL text search configuration of this collection's chunks (default: TEXT_SEARCH_CONFIG),
    # e.g. `simple` for Chinese, Japanese or Korean documents (no stemming; CJK is split into bigrams).
    text_search_config: str | None = None
    best_of: BestOf | None = None
    # Whose read role may see the collection's rows (row security; sql/0014_tenants.sql).
    tenant: str = DEFAULT_TENANT
    document_fields: list[str] = Field(default_factory=lambda: list(DEFAULT_DOCUMENT_FIELDS))
    markdown: MarkdownTemplating = Field(default_factory=MarkdownTemplating)

    @field_validator("document_fields")
    @classmethod
    def _field_names(cls, names: list[str]) -> list[str]:
        # Stored metadata keys are lower case with _ for - (parsing._normalize_metadata).
        return [str(n).strip().lower().replace("-", "_") for n in names if str(n).strip()]

    @field_validator("name")
    @classmethod
    def _partition_safe(cls, name: str) -> str:
        if not name or not all(c.isalnum() or c in "_-" for c in name):
            raise ValueError(f"collection name {name!r} may only use letters, digits, _ and -")
        return name

    @field_validator("tenant")
    @classmethod
    def _tenant_name(cls, tenant: str) -> str:
        if not TENANT_NAME.match(tenant):
            raise ValueError(f"tenant {tenant!r} may only use 1-40 lower-case letters, digits and _, "
                             "starting with a letter")
        return tenant

    @field_validator("include", "exclude")
    @classmethod
    def _globs(cls, globs: list[str]) -> list[str]:
        for glob in globs:
            if not isinstance(glob, str) or not glob.strip():
                raise ValueError(f"globs must be non-empty strings, got {glob!r}")
        return globs

    def fingerprint(self) -> str:
        # Settings added since the first release are left out at their defaults, so manifests written
        # before them keep their versions (a version change reruns the collection).
        fields = type(self).model_fields
        at_default = {name for name in ADDED_SETTINGS
                      if getattr(self, name) == fields[name].get_default(call_default_factory=True)}
        return self.model_dump_json(exclude=at_default)


class Manifest(BaseModel):
    path: Path
    collections: dict[str, Collection]

    def external_roots(self) -> dict[str, Path]:
        """Collections whose root lies outside the manifest's folder (allowed, but worth showing)."""
        return {name: c.root for name, c in self.collections.items() if not c.root.is_relative_to(self.path.parent)}

    def collection(self, name: str) -> Collection:
        try:
            return self.collections[name]
        except KeyError:
            known = ", ".join(self.collections) or "none"
            raise ManifestError(
                f"no collection {name!r} in {self.path} (collections: {known})"
            ) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load keeps the last of two equal keys: a collection listed twice would silently lose
    its first entry."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            # Merged keys (`<<: *defaults`) may be overridden: only keys written out count.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ManifestError(
                    f"{key!r} appears twice (lines {seen[key]} and {key_node.start_mark.line + 1}): "
                    "each collection (and each key of a mapping) may be listed once; rename or merge them")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def load_manifest(path: str | Path) -> Manifest:
    """Read and validate corpus.yaml; every problem raises ManifestError before any write."""
    path = Path(path).expanduser().resolve()
    try:
        raw = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)
    except FileNotFoundError:
        raise ManifestError(
            f"manifest {path} not found: pass --manifest or set CORPUS_MANIFEST"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {path} cannot be read: {exc}") from None
    except yaml.YAMLError as exc:
        raise ManifestError(f"manifest {path} is not valid YAML: {exc}") from None
    except ManifestError as exc:
        raise ManifestError(f"manifest {path}: {exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("collections"), dict) or not raw["collections"]:
        raise ManifestError(
            f"manifest {path} must have a non-empty mapping `collections:` of name -> {{root, include, ...}}"
        )
    collections = {}
    for name, entry in raw["collections"].items():
        if not isinstance(entry, dict):
            raise ManifestError(f"manifest {path}: collection {name!r} must be a mapping with a `root`")
        if "name" in entry:
            raise ManifestError(f"manifest {path}: collection {name!r}: remove `name:`; the key above it is the name")
        try:
            collection = Collection(name=str(name), **entry)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
            )
            raise ManifestError(f"manifest {path}: collection {name!r}: {problems}") from None
        if collection.name in collections:  # e.g. `1:` and `"1":`
            raise ManifestError(f"manifest {path}: collection {collection.name!r} is listed twice: "
                                "rename or merge them")
        root = (path.parent / collection.root).resolve()
        if not root.is_dir():
            raise ManifestError(
                f"manifest {path}: collection {name!r} root {root} is not a directory"
            )
        collections[collection.name] = collection.model_copy(update={"root": root})
    return Manifest(path=path, collections=collections)


@dataclass(frozen=True)
class SourceFile:
    """One file of a collection as found on disk; `problem` is set when it cannot be read."""

    path: str  # relative to the collection root, POSIX separators
    abs_path: Path
    size: int = 0
    data: bytes | None = None
    content_hash: bytes | None = None
    problem: str | None = None
    # Refused by policy rather than unreadable: a version indexed earlier leaves the index too.
    withdrawn: bool = False


@functools.lru_cache(maxsize=256)
def _glob_regex(glob: str) -> re.Pattern[str]:
    """Gitignore-style glob: `**/` spans directories, `*` and `?` stay within one name.

    (PurePath.full_match does this from Python 3.13; 3.11 must be supported.)"""
    out, i = [], 0
    while i < len(glob):
        if glob.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif glob.startswith("**", i):
            out.append(".*")
            i += 2
        elif glob[i] == "*":
            out.append("[^/]*")
            i += 1
        elif glob[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(glob[i]))
            i += 1
    return re.compile("".join(out) + r"\Z")


def matches_globs(rel: str, globs: list[str]) -> bool:
    return any(_glob_regex(glob).match(rel) for glob in globs)



def scan_collection(collection: Collection, max_file_bytes: int) -> list[SourceFile]:
    """Every regular file under the root that the include/exclude globs select, read and hashed.

    Directory symlinks are not followed (no loops); a file symlink is read through if it stays
    inside the root (or the collection sets follow_external_symlinks), and a broken, looping or
    escaping one is reported, not raised.
    """
    root = collection.root
    found: list[SourceFile] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames.sort()
        for filename in sorted(filenames):
            abs_path = Path(dirpath) / filename
            rel = abs_path.relative_to(root).as_posix()
            if not matches_globs(rel, collection.include) or matches_globs(rel, collection.exclude):
                continue
            if _undecodable(rel):
                # PostgreSQL text cannot hold the name: reported under a readable one, never stored.
                found.append(SourceFile(rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), abs_path,
                                        problem="file name is not valid UTF-8: rename the file"))
                continue
            found.append(_read(rel, abs_path, max_file_bytes, root=None if collection.follow_external_symlinks else root.resolve()))
    return found


def collection_version(collection: Collection, files: list[SourceFile]) -> str:
    """The data version of a scanned collection: it changes exactly when the manifest entry or any
    selected file's path or bytes change (or a file becomes unreadable, or readable again)."""
    digest = hashlib.sha256(collection.fingerprint().encode())
    for f in files:
        digest.update(f.path.encode() + b"\0" + (f.content_hash or (f.problem or "").encode()) + b"\0")
    return digest.hexdigest()[:24]


def _undecodable(name: str) -> bool:
    try:
        name.encode("utf-8")
        return False
    except UnicodeEncodeError:
        return True


def _read(rel: str, abs_path: Path, max_file_bytes: int, root: Path | None) -> SourceFile:
    """`root`: the folder the file must resolve into (None: anywhere)."""
    try:
        info = abs_path.stat()
    except OSError as exc:
        if exc.errno == 40:
            reason = "symlink loop: point the link at a real file or exclude it"
        elif abs_path.is_symlink():
            reason = "broken symlink: its target does not exist"
        else:
            reason = f"cannot be read ({exc.strerror})"
        return SourceFile(rel, abs_path, problem=reason)
    if root is not None and abs_path.is_symlink() and not abs_path.resolve().is_relative_to(root):
        return SourceFile(rel, abs_path, withdrawn=True, problem=(
            f"symlink to {abs_path.resolve()}, outside the collection root: refused (move the file into "
            "the root, exclude the link, or set follow_external_symlinks: true on the collection)"))
    if not stat.S_ISREG(info.st_mode):
        return SourceFile(rel, abs_path, problem="not a regular file (device, socket or pipe)")
    if info.st_size > max_file_bytes:
        return SourceFile(
            rel, abs_path, size=info.st_size,
            problem=f"{info.st_size} bytes is over MAX_FILE_BYTES={max_file_bytes}: "
            "split the file, exclude it, or raise the limit",
        )
    try:
        data = abs_path.read_bytes()
    except OSError as exc:
        return SourceFile(rel, abs_path, size=info.st_size, problem=f"cannot be read ({exc.strerror})")
    return SourceFile(rel, abs_path, size=len(data), data=data, content_hash=content_hash(data))
