"""aiohttp's default HTTPS client contexts, their CA certificates loaded at first need.

Why: `aiohttp.connector` builds two default `ssl.SSLContext`s when it is imported, and
each reads the system CA bundle into its own OpenSSL store: ≈2 MiB of an idle node's
≈63 MiB (docs/benchmarks.md, "Idle node"). The node itself uses aiohttp only to serve
HTTP; its own clients bring their own contexts (MCP mounts: httpx2; the bridges'
libraries; aiogram passes one built from certifi). Only code that is not ours and runs
in the node may use aiohttp's client with its default contexts: Python plugin tools and
the bridges' libraries.

So the daemon imports aiohttp through `import_aiohttp_deferring_cas()` before anything
else imports it: while aiohttp is imported, `SSLContext.set_default_verify_paths` (what
`load_default_certs` and `create_default_context` call to read the CA bundle) only
remembers the context it was called on. `load_deferred_cas()` then calls that same public
method on each remembered context, once; it runs before a plugin's code is imported and
before a bridge starts.

Fails closed: until then the verifying context holds no CA certificate, so a certificate
check fails; it never passes without one.
"""

from __future__ import annotations

import ssl
import sys
import threading

_deferred: list[ssl.SSLContext] = []
_lock = threading.Lock()


def import_aiohttp_deferring_cas() -> None:
    """Import aiohttp with its default contexts' CA bundle not yet read (no-op once
    aiohttp is imported: its contexts are complete then)."""
    if "aiohttp" in sys.modules or "set_default_verify_paths" in vars(ssl.SSLContext):
        return

    importer = threading.get_ident()
    inherited = ssl.SSLContext.set_default_verify_paths

    def defer(context: ssl.SSLContext) -> None:
        if threading.get_ident() != importer:
            # Only the import's own contexts wait: another thread's (an exporter started
            # from a .pth file, say) gets its CAs now, as it would without us.
            inherited(context)
            return
        with _lock:
            _deferred.append(context)

    ssl.SSLContext.set_default_verify_paths = defer  # type: ignore[method-assign,assignment]
    try:
        import aiohttp.connector  # noqa: F401  (builds the default contexts)
    finally:
        # Back to the method SSLContext inherits from `_ssl._SSLContext`.
        del ssl.SSLContext.set_default_verify_paths


def load_deferred_cas() -> None:
    """Give every context created by `import_aiohttp_deferring_cas` its CA certificates
    (idempotent; blocking file I/O of a few milliseconds)."""
    with _lock:
        while _deferred:
            _deferred.pop().set_default_verify_paths()


def cas_deferred() -> bool:
    """True while some context still waits for its CA certificates."""
    with _lock:
        return bool(_deferred)
