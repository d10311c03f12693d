"""The corpus manifest (corpus.yaml) and the scan of each collection's files.

A scan never raises for a bad file: it returns the file with the reason it cannot be read,
so one broken file never stops a collection."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
import re
import stat
import struct
import time
from collections.abc import Iterator, Mapping
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

from .hashing import content_hash, file_hash
from .templating import MarkdownTemplating

EmbedMode = Literal["full", "metadata_only", "skip"]
# Tenant names become role names (refinery_tenant_<name>): short, lower-case, unquoted.
TENANT_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
DEFAULT_TENANT = "public"  # the tenant of a collection whose entry names none
DEFAULT_INCLUDE = ["**/*.md", "**/*.markdown", "**/*.mdx", "**/*.rst", "**/*.txt", "**/*.html", "**/*.htm",
                   "**/*.adoc", "**/*.asciidoc", "**/*.ipynb", "**/*.pdf", "**/*.docx", "**/*.pptx"]

# Metadata keys (front matter, <meta> tags, header fields) whose text describes the whole document:
# indexed and embedded as the document's own passage, so a page that says what it is only in
# its front matter is still found. A dotted key reads nested front matter, through lists item by
# item: a VitePress or Starlight home page is its `hero` and `features` (the audit's #9).
DEFAULT_DOCUMENT_FIELDS = ["description", "summary", "abstract", "subtitle", "excerpt", "keywords", "tags",
                           "hero.name", "hero.title", "hero.text", "hero.tagline", "features.title", "features.details"]


# Collection settings added after the first release (see Collection.fingerprint).
ADDED_SETTINGS = ("text_search_config", "best_of", "tenant", "document_fields", "markdown", "shards")


class ManifestError(ValueError):
    """The manifest is unusable; nothing has been written. The message names the problem."""


class RootMissingError(ManifestError):
    """A collection's root is not a directory now (an unmounted share, a renamed folder): that
    collection cannot be read, and nothing of it is deleted; the other collections are fine."""


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
    # Parts of the collection that ingest in parallel (one partition each), by a stable hash of
    # each file's relative path; 1: the collection is one partition, as it always was.
    shards: int = Field(1, ge=1, le=1024)

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


def shard_of(path: str, shards: int) -> int:
    """The shard of a relative path: the first 4 bytes of its sha256, big-endian, modulo the
    shard count (sql/0016's path_shard computes the same in the database)."""
    return int.from_bytes(hashlib.sha256(path.encode("utf-8")).digest()[:4], "big") % shards


@dataclass(frozen=True)
class Shard:
    """One partition of ingestion: a collection, or one shard of a sharded collection. Every
    file belongs to exactly one shard, so the shards' documents, deletes and chunks add up to
    the collection's."""

    collection: str
    index: int = 0
    count: int = 1

    @property
    def key(self) -> str:
        """Its partition key: the collection's name when unsharded, else `name/index`."""
        return self.collection if self.count == 1 else f"{self.collection}/{self.index}"

    def holds(self, path: str) -> bool:
        return self.count == 1 or shard_of(path, self.count) == self.index

    def documents_filter(self, column: str = "path") -> str:
        """SQL that keeps this shard's documents (nothing when unsharded); integers only."""
        return "" if self.count == 1 else f" AND path_shard({column}, {int(self.count)}) = {int(self.index)}"

    def chunks_filter(self, column: str = "document_id") -> str:
        """SQL that keeps the chunks of this shard's documents (nothing when unsharded)."""
        if self.count == 1:
            return ""
        return (f" AND {column} IN (SELECT id FROM documents WHERE collection = {_quote(self.collection)}"
                f"{self.documents_filter()})")


def _quote(name: str) -> str:
    # Collection names are letters, digits, _ and - (Collection._partition_safe).
    return "'" + name.replace("'", "''") + "'"


class Manifest(BaseModel):
    path: Path
    collections: dict[str, Collection]

    def external_roots(self) -> dict[str, Path]:
        """Collections whose root lies outside the manifest's folder (allowed, but worth showing)."""
        return {name: c.root for name, c in self.collections.items() if not c.root.is_relative_to(self.path.parent)}

    def shards(self) -> list[Shard]:
        """Every ingestion partition, by collection then shard."""
        return [Shard(c.name, i, c.shards) for _, c in sorted(self.collections.items()) for i in range(c.shards)]

    def shard(self, key: str) -> tuple[Collection, Shard]:
        """The collection and shard of an ingestion partition key (`name` or `name/index`)."""
        name, _, index = key.partition("/")
        collection = self.collection(name)
        if (collection.shards == 1) != (index == "") or (index and not (
                index.isdigit() and int(index) < collection.shards)):
            keys = ", ".join(s.key for s in self.shards() if s.collection == name)
            raise ManifestError(f"no partition {key!r} in {self.path}: collection {name!r} has "
                                f"{collection.shards} shard(s) ({keys})")
        return collection, Shard(name, int(index or 0), collection.shards)

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


def _setting_problem(err: dict) -> str:
    """One validation error of a collection in the manifest's words: an unknown key is named with
    the setting it most likely means, not as pydantic's "Extra inputs are not permitted"."""
    where = ".".join(str(p) for p in err["loc"])
    if err["type"] == "extra_forbidden":
        import difflib

        known = Collection.model_fields if len(err["loc"]) == 1 else ()
        close = difflib.get_close_matches(str(err["loc"][-1]), [k for k in known if k != "name"], n=1)
        return f"unknown key {where!r}" + (f" (did you mean {close[0]!r}?)" if close else "")
    return f"{where}: {err['msg']}"


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
            if name in Collection.model_fields:  # QA: `include:` indented as if it were a collection
                raise ManifestError(f"manifest {path}: {name!r} is a collection's setting, not a collection: "
                                    "indent it under its collection's name, beside `root:`")
            raise ManifestError(f"manifest {path}: collection {name!r} must be a mapping with a `root`")
        if "name" in entry:
            raise ManifestError(f"manifest {path}: collection {name!r}: remove `name:`; the key above it is the name")
        try:
            collection = Collection(name=str(name), **entry)
        except ValidationError as exc:
            problems = "; ".join(_setting_problem(err) for err in exc.errors())
            raise ManifestError(f"manifest {path}: collection {name!r}: {problems}") from None
        if collection.name in collections:  # e.g. `1:` and `"1":`
            raise ManifestError(f"manifest {path}: collection {collection.name!r} is listed twice: "
                                "rename or merge them")
        # The root is checked where the collection's files are read (check_root), not here: one
        # unmounted share must not stop every other collection's runs and commands.
        root = (path.parent / collection.root).resolve()
        collections[collection.name] = collection.model_copy(update={"root": root})
    return Manifest(path=path, collections=collections)


def check_text_search_configs(manifest: Manifest, names: list[str], default: str, store) -> None:
    """The text search configuration of each named collection (its own, else `default`, the
    TEXT_SEARCH_CONFIG setting) must be one the server has: a typo is a broken manifest (or a
    bad setting), reported before anything is written, not a failure after the documents are."""
    used = {name: manifest.collection(name).text_search_config or default for name in names}
    unknown = set(store.unknown_text_search_configs(sorted(set(used.values()))))
    if not unknown:
        return
    valid = valid_text_search_configs(store)
    for name, config in used.items():
        if config in unknown and manifest.collection(name).text_search_config:
            raise ManifestError(f"manifest {manifest.path}: collection {name!r}: text_search_config: {config!r} is "
                                f"not a text search configuration of this PostgreSQL; {valid}")
    users = ", ".join(repr(name) for name, config in used.items() if config in unknown)
    raise ValueError(f"TEXT_SEARCH_CONFIG={default!r} is not a text search configuration of this PostgreSQL (it is "
                     f"that of the collections with no `text_search_config` in {manifest.path}: {users}); {valid}")


def valid_text_search_configs(store) -> str:
    """A few of the server's text search configurations, for a message about one it lacks."""
    configs = store.text_search_configs()
    common = [c for c in ("simple", "english", "german", "french", "spanish") if c in configs]
    shown = common + [c for c in configs if c not in common][:8 - len(common)]
    more = len(configs) - len(shown)
    return f"valid ones: {', '.join(shown)}" + (f" and {more} more (SELECT cfgname FROM pg_ts_config)" if more else "")


def root_problem(collection: Collection) -> str | None:
    """One line naming the collection, its root and what to do when the root cannot be read now;
    None when it is a directory."""
    if collection.root.is_dir():
        return None
    return (f"collection {collection.name!r}: root {collection.root} is missing or not a directory: mount or "
            "restore it, or fix its `root:` in the manifest (its documents stay indexed and searchable meanwhile)")


def check_root(collection: Collection) -> None:
    """Raise RootMissingError before a scan: a missing root must never read as a collection
    whose every file was deleted."""
    problem = root_problem(collection)
    if problem is not None:
        raise RootMissingError(problem)


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
    severity: Literal["error", "warning"] = "error"  # of `problem`; a folder not entered is a warning
    # (size, mtime, ctime, inode) when content_hash was taken; None when too recent to trust.
    signature: bytes | None = None


# A file changed less than this before its signature was taken could change again within the
# same timestamp tick (coarse filesystem clocks) without its signature changing: hashed next time.
RACY_SECONDS = 2.0


def file_signature(info: os.stat_result, scan_started_ns: int) -> bytes | None:
    """What must change when a file's bytes change: any write moves ctime, which no tool can set
    back (cp -p and rsync -t restore mtime, not ctime). None for a file written too recently."""
    if max(info.st_mtime_ns, info.st_ctime_ns) >= scan_started_ns - int(RACY_SECONDS * 1e9):
        return None
    return struct.pack("<4q", info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def read_sources(files: list[SourceFile]) -> list[SourceFile]:
    """The files with their bytes, read now and hashed again from those very bytes (a file
    rewritten since the scan is parsed and stored as it is now, never under an older hash)."""
    out = []
    for f in files:
        if f.problem is not None:
            out.append(f)
            continue
        try:
            data = f.abs_path.read_bytes()
        except OSError as exc:
            out.append(dataclasses.replace(f, problem=f"cannot be read ({exc.strerror})"))
            continue
        out.append(dataclasses.replace(f, size=len(data), data=data, content_hash=content_hash(data)))
    return out


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


def scan_collection(collection: Collection, max_file_bytes: int,
                    known: Mapping[str, tuple[bytes, bytes]] | None = None, shard: Shard | None = None) -> list[SourceFile]:
    """Every regular file under the root that the include/exclude globs select, hashed (streamed:
    the bytes are not kept; read_sources reads the files to parse). `known`: path -> (signature,
    content hash) stored earlier; a file whose signature is unchanged is not read again. `shard`:
    only that shard's files.

    A file symlink is read through if it stays inside the root (or the collection sets
    follow_external_symlinks), and a broken, looping or escaping one is reported, not raised.
    Symlinked folders follow _FolderLinks' rules; each one not entered is reported under its
    path with a trailing slash.
    """
    check_root(collection)
    root = collection.root
    inside = None if collection.follow_external_symlinks else root.resolve()
    known = known or {}
    started_ns = time.time_ns()
    found: list[SourceFile] = []
    links = _FolderLinks(root.resolve(), collection.follow_external_symlinks, collection.exclude)
    selected = 0  # files the globs select in the whole root, whatever the shard
    try:
        for rel, is_link, skipped in _walk(str(root), "", str(root.resolve()), links):
            if skipped is not None:
                if shard is None or shard.holds(rel):
                    found.append(SourceFile(rel, root / rel, problem=skipped[1], severity=skipped[0]))
                continue
            if not matches_globs(rel, collection.include) or matches_globs(rel, collection.exclude):
                continue
            selected += 1
            if shard is not None and not shard.holds(rel):
                continue
            abs_path = root / rel
            twin = _indexed_twin(abs_path, collection) if is_link else None
            if twin is not None:
                found.append(SourceFile(rel, abs_path, withdrawn=True, severity="warning", problem=(
                    f"symlink to {twin}, a file of the collection: indexed under {twin}, not again under this "
                    "path (exclude the link to silence this)")))
                continue
            if _undecodable(rel):
                # PostgreSQL text cannot hold the name: reported under a readable one, never stored.
                found.append(SourceFile(rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace"), abs_path,
                                        problem="file name is not valid UTF-8: rename the file"))
                continue
            found.append(_read(rel, abs_path, max_file_bytes, started_ns, known.get(rel),
                               root=inside if is_link else None))
    except FileNotFoundError:
        check_root(collection)  # the root itself vanished during the scan (unmounted): say so
        raise
    if not selected and known:
        # An unmounted share often leaves its empty mount point, and include globs that a manifest
        # edit broke select nothing: either would read as every file deleted, and empty the index.
        raise RootMissingError(
            f"collection {collection.name!r}: root {root} holds no file the manifest selects, where "
            f"{len(known)} documents are indexed: mount or restore the folder, or fix its `root:` or "
            "`include:`; to empty the collection on purpose, remove it from the manifest and run "
            "`refinery prune` (its documents stay indexed and searchable meanwhile)")
    return found


def _indexed_twin(link: Path, collection: Collection) -> str | None:
    """The path under which the collection indexes the file a symlink inside it points at (the
    rule for folder links: a file is indexed once, under its own path); None when the target is
    outside the root or not selected, and the link is the only way in."""
    root = collection.root.resolve()
    try:
        target = link.resolve()
    except (OSError, RuntimeError):  # a loop: _read reports it
        return None
    if not target.is_relative_to(root) or not target.is_file():
        return None
    twin = target.relative_to(root).as_posix()
    return twin if matches_globs(twin, collection.include) and not matches_globs(twin, collection.exclude) else None


class _FolderLinks:
    """Which symlinked folders a scan enters. One inside the root is not: its target is scanned
    under its own path already, and entering would index every file twice. One outside is entered
    only with follow_external_symlinks (the rule for file symlinks), and each outside folder once.
    One that leads back to a folder holding it (or holding the root) is a loop and never entered.
    An excluded link (`exclude: [docs/old/**]` excludes the link docs/old) is neither entered nor
    reported."""

    def __init__(self, root: Path, follow_external: bool, exclude: list[str]) -> None:
        self.root = root
        self.follow_external = follow_external
        self.exclude = exclude
        self.entered: dict[Path, str] = {}  # outside folder -> the path it is scanned under

    def refusal(self, rel: str, holder: str, target: Path) -> tuple[Literal["error", "warning"], str] | None:
        """None: enter the link at `rel` (in the folder whose real path is `holder`), else
        (severity, reason)."""
        inside = target.is_relative_to(self.root)
        if not inside and not self.follow_external:  # `up -> ..` too: outside first, then a loop (QA)
            return "error", (f"symlink to folder {target}, outside the collection root: refused (move the folder "
                             "into the root, exclude the link, or set follow_external_symlinks: true on the "
                             "collection)")
        if Path(holder).is_relative_to(target) or self.root.is_relative_to(target):
            return "warning", (f"symlinked folder loops back to {target}, which holds it: not entered "
                               "(exclude the link to silence this)")
        if inside:
            where = target.relative_to(self.root).as_posix()
            return "warning", (f"symlinked folder to {where}/ inside the collection root: not entered, its files "
                               f"are indexed under {where}/ (exclude the link to silence this)")
        if target in self.entered:
            return "warning", (f"symlinked folder to {target}: not entered again, its files are indexed under "
                               f"{self.entered[target]} (exclude the link to silence this)")
        self.entered[target] = rel
        return None


def _walk(folder: str, prefix: str, real: str, links: _FolderLinks,
          ) -> Iterator[tuple[str, bool, tuple[Literal["error", "warning"], str] | None]]:
    """(relative path, is a symlink, None) of every file under `folder` (whose real path is
    `real`), a folder's files before its subfolders', each sorted by name; (path + "/", True,
    (severity, reason)) for a symlinked folder not entered. One scandir per folder: the file type
    comes with the listing, not from a stat per file."""
    files, folders = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            if is_dir:
                folders.append((entry.name, entry.is_symlink()))
            else:
                files.append((entry.name, entry.is_symlink()))
    for name, is_link in sorted(files):
        yield prefix + name, is_link, None
    for name, is_link in sorted(folders):
        path, rel = os.path.join(folder, name), f"{prefix}{name}/"
        target = Path(os.path.realpath(path)) if is_link else Path(real, name)
        if is_link and matches_globs(rel, links.exclude):
            continue
        skipped = links.refusal(rel, real, target) if is_link else None
        if skipped is not None:
            yield rel, True, skipped
        else:
            yield from _walk(path, rel, str(target), links)


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


def _read(rel: str, abs_path: Path, max_file_bytes: int, started_ns: int, known: tuple[bytes, bytes] | None,
          root: Path | None) -> SourceFile:
    """`root`: the folder a symlinked file must resolve into (None: anywhere, or not a symlink);
    `known`: its stored (signature, content hash)."""
    try:
        info = os.stat(abs_path)
    except OSError as exc:
        if exc.errno == 40:
            reason = "symlink loop: point the link at a real file or exclude it"
        elif abs_path.is_symlink():
            reason = "broken symlink: its target does not exist"
        else:
            reason = f"cannot be read ({exc.strerror})"
        return SourceFile(rel, abs_path, problem=reason)
    if root is not None and not abs_path.resolve().is_relative_to(root):
        return SourceFile(rel, abs_path, withdrawn=True, problem=(
            f"symlink to {abs_path.resolve()}, outside the collection root: refused (move the file into "
            "the root, exclude the link, or set follow_external_symlinks: true on the collection)"))
    if not stat.S_ISREG(info.st_mode):
        return SourceFile(rel, abs_path, problem="not a regular file (device, socket or pipe): exclude it in corpus.yaml")
    if info.st_size > max_file_bytes:
        return SourceFile(
            rel, abs_path, size=info.st_size,
            problem=f"{info.st_size} bytes is over MAX_FILE_BYTES={max_file_bytes}: "
            "split the file, exclude it, or raise the limit",
        )
    signature = file_signature(info, started_ns)
    if known is not None and signature is not None and known[0] == signature:
        return SourceFile(rel, abs_path, size=info.st_size, content_hash=known[1], signature=signature)
    try:
        digest, size = file_hash(abs_path)
    except OSError as exc:
        return SourceFile(rel, abs_path, size=info.st_size, problem=f"cannot be read ({exc.strerror})")
    # Read after the stat: a write in between moves ctime, so the next scan reads it again.
    return SourceFile(rel, abs_path, size=size, content_hash=digest, signature=signature)
