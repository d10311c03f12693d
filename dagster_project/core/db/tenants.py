"""Tenants (sql/0014_tenants.sql): each one's read role, the tenant of each collection, and the
hashed application tokens of `refinery serve`."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

from psycopg import sql

from ..ingest.corpus import TENANT_NAME

TOKEN_PREFIX = "rfy_"
# What a token looks like wherever it is pasted: the prefix and 16 or more of the 43 URL-safe
# characters create_token gives it (a partly pasted token is still a secret).
TOKEN_SHAPE = re.compile(re.escape(TOKEN_PREFIX) + r"[A-Za-z0-9_-]{16,}")


class TenantError(ValueError):
    """A tenant or token that cannot be used; the message says what to do."""


def check_tenant_name(name: str) -> str:
    if not isinstance(name, str) or not TENANT_NAME.match(name):
        raise TenantError(f"tenant name {name!r}: use 1-40 lower-case letters, digits and _, starting with a letter")
    return name


def tenant_role(name: str) -> str:
    """The tenant's read role: derived from the (checked) name, so it is never chosen by input."""
    return f"refinery_tenant_{check_tenant_name(name)}"


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass
class TokenInfo:
    id: int
    tenant: str
    label: str | None
    created_at: object
    revoked_at: object


class TenantTables:
    """Tenants, their collections and tokens (a part of `VectorStore`)."""

    def assign_tenant(self, collection: str, tenant: str) -> None:
        """Record the collection's tenant (the documents step, from the manifest): its rows are
        visible to that tenant's role from this commit on, and to no other tenant's."""
        with self.writing() as conn:
            conn.execute(
                "INSERT INTO collection_tenants (collection, tenant) VALUES (%s, %s) ON CONFLICT (collection) "
                "DO UPDATE SET tenant = EXCLUDED.tenant, assigned_at = now() "
                "WHERE collection_tenants.tenant <> EXCLUDED.tenant", (collection, check_tenant_name(tenant)))

    def add_tenant(self, name: str) -> bool:
        """The tenant's read role (a member of refinery_tenant, which holds the grants and the row
        policies) and its row; True if the tenant is new to this database. Roles are cluster-wide:
        one made for another database is reused. Needs a user that may create roles."""
        role = tenant_role(name)
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('refinery:tenant-roles'))")
            if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            conn.execute(sql.SQL("GRANT refinery_tenant TO {}").format(sql.Identifier(role)))
            # The operator's connection takes the role for a tenant's requests (SET ROLE).
            conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(role)))
            conn.execute("SET LOCAL ROLE refinery_writer")
            return conn.execute("INSERT INTO tenants (name, role) VALUES (%s, %s) ON CONFLICT DO NOTHING",
                                (name, role)).rowcount == 1

    def tenants(self) -> dict[str, dict]:
        """Every tenant (with a role, or named by a collection): {"role": its read role or None
        before `tenant add`, "collections": [...]}."""
        with self.reading() as conn:
            rows = conn.execute(
                "SELECT coalesce(t.name, c.tenant), t.role, c.collection FROM tenants t "
                "FULL JOIN collection_tenants c ON c.tenant = t.name ORDER BY 1, 3").fetchall()
        found: dict[str, dict] = {}
        for name, role, collection in rows:
            entry = found.setdefault(name, {"role": role, "collections": []})
            if collection is not None:
                entry["collections"].append(collection)
        return found

    def tenant_exists(self, name: str) -> bool:
        with self.reading() as conn:
            return conn.execute("SELECT 1 FROM tenants WHERE name = %s", (name,)).fetchone() is not None

    def create_token(self, tenant: str, label: str | None = None) -> tuple[int, str]:
        """A new token for the tenant: (id, token). The token is shown once; only its hash is kept."""
        if not self.tenant_exists(check_tenant_name(tenant)):
            raise TenantError(f"no tenant {tenant!r} yet: create it with `refinery tenant add {tenant}`")
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        with self.writing() as conn:
            token_id = conn.execute("INSERT INTO api_tokens (tenant, token_hash, label) VALUES (%s, %s, %s) "
                                    "RETURNING id", (tenant, hash_token(token), label)).fetchone()[0]
        return token_id, token

    def revoke_token(self, token_id: int) -> bool:
        with self.writing() as conn:
            return conn.execute("UPDATE api_tokens SET revoked_at = now() WHERE id = %s AND revoked_at IS NULL",
                                (token_id,)).rowcount == 1

    def tokens(self) -> list[TokenInfo]:
        with self.writing() as conn:  # the table is the writer's alone: readers see tokens only by hash
            return [TokenInfo(*r) for r in conn.execute(
                "SELECT id, tenant, label, created_at, revoked_at FROM api_tokens ORDER BY id")]

    def token_tenant(self, token: str) -> str | None:
        """The tenant a live token belongs to, else None (unknown or revoked)."""
        with self.reading() as conn:
            row = conn.execute("SELECT tenant FROM api_token_role(%s)", (hash_token(token),)).fetchone()
        return row[0] if row else None

