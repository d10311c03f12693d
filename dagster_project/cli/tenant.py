"""`refinery tenant add | list` and `refinery token create | list | revoke`: tenants' read roles
and the application tokens of `refinery serve` (shown once, stored hashed)."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from ..core.db.tenants import check_tenant_name, tenant_role
from ..core.ingest.corpus import DEFAULT_TENANT
from .common import CliError, emit, load_settings, prepare_databases


@contextmanager
def _store(args):
    from ..core.db.store import VectorStore

    store = VectorStore(prepare_databases(load_settings(args)).vector_store)
    try:
        yield store
    finally:
        store.close()


def cmd_tenant_add(args) -> int:
    check_tenant_name(args.name)
    with _store(args) as store:
        new = store.add_tenant(args.name)
        collections = store.tenants()[args.name]["collections"]
    emit({"tenant": args.name, "role": tenant_role(args.name), "new": new, "collections": collections}, args.json,
         f"tenant {args.name}: read role {tenant_role(args.name)} ({'created' if new else 'already there'}); "
         f"collections: {', '.join(collections) or 'none yet (set `tenant: ' + args.name + '` in the manifest)'}")
    return 0


def cmd_tenant_list(args) -> int:
    with _store(args) as store:
        tenants, tokens = store.tenants(), store.tokens()
    rows = {name: {**tenant, "live_tokens": sum(1 for t in tokens if t.tenant == name and t.revoked_at is None)}
            for name, tenant in tenants.items()}
    text = "\n".join(f"{name:<20} {r['role'] or '(no role: refinery tenant add ' + name + ')':<40} "
                     f"{r['live_tokens']} tokens  {', '.join(r['collections']) or '-'}"
                     for name, r in rows.items()) or "no tenants yet"
    emit(rows, args.json, text)
    return 0


def cmd_token_create(args) -> int:
    check_tenant_name(args.tenant)
    with _store(args) as store:
        known = store.tenants()
        if args.tenant not in known:  # a typo would get a working token that sees nothing
            raise CliError(f"no tenant {args.tenant!r}: no collection names it (`tenant: {args.tenant}` in the "
                           f"manifest, then `refinery ingest`) and `refinery tenant add {args.tenant}` was not run"
                           f"{'; tenants: ' + ', '.join(sorted(known)) if known else ''}")
        if store.add_tenant(args.tenant):
            print(f"refinery: tenant {args.tenant} created (read role {tenant_role(args.tenant)})", file=sys.stderr)
        token_id, token = store.create_token(args.tenant, args.label)
    print(f"refinery: token {token_id} for tenant {args.tenant}; it is shown only now (only its hash is stored): "
          "send it as `Authorization: Bearer <token>`", file=sys.stderr)
    emit({"id": token_id, "tenant": args.tenant, "token": token}, args.json, token)
    return 0


def cmd_token_list(args) -> int:
    with _store(args) as store:
        tokens = store.tokens()
    rows = [{"id": t.id, "tenant": t.tenant, "label": t.label, "created_at": t.created_at,
             "revoked_at": t.revoked_at} for t in tokens]
    text = "\n".join(f"{t['id']:>5} {t['tenant']:<20} {'revoked' if t['revoked_at'] else 'live':<8} "
                     f"{t['created_at']:%Y-%m-%d %H:%M}  {t['label'] or ''}" for t in rows) or "no tokens"
    emit(rows, args.json, text)
    return 0


def cmd_token_revoke(args) -> int:
    with _store(args) as store:
        if not store.revoke_token(args.id):
            raise CliError(f"no live token {args.id}: `refinery token list` shows the tokens")
    print(f"token {args.id} revoked: its next request gets 401")
    return 0


def add_commands(sub) -> None:
    tenant = sub.add_parser("tenant", help="tenants: each one's read role sees only its collections (manifest `tenant:`)")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    p = tenant_sub.add_parser("add", help="create the tenant's read role (needs a user that may create roles)")
    p.add_argument("name")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tenant_add)
    p = tenant_sub.add_parser("list", help="tenants, their roles, collections and live tokens")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_tenant_list)
    token = sub.add_parser("token", help="application tokens of `refinery serve`, one tenant each")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    p = token_sub.add_parser("create", help="a new token (printed once; only its hash is stored)")
    p.add_argument("--tenant", default=DEFAULT_TENANT, help=f"whose collections the token reads (default: {DEFAULT_TENANT})")
    p.add_argument("--label", help="what the token is for (shown by `token list`)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token_create)
    p = token_sub.add_parser("list", help="tokens (never their value): id, tenant, label, live or revoked")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_token_list)
    p = token_sub.add_parser("revoke", help="revoke a token at once")
    p.add_argument("id", type=int)
    p.set_defaults(func=cmd_token_revoke)
