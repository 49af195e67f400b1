"""``ccci-dist flower``: Flower against the ccci-dist broker, never open to the network unauthenticated.

Flower binds every interface with no login by default (CVE-2022-30034 is an OAuth bypass on
top of that). Here the default address is 127.0.0.1, a non-loopback bind needs basic auth or
OAuth, basic-auth credentials travel in ``FLOWER_BASIC_AUTH`` (never argv), and OAuth email
patterns must be anchored regexes (``.*@example\\.org$``), translated to Flower's own syntax.
``/healthcheck`` and ``/metrics`` stay open by Flower's design; they carry no secrets.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

import click

from ccci_dist.config import ConfigError
from ccci_dist.engine.access import is_loopback, read_basic_auth

# Flower options this command owns; passing them through would bypass its checks.
MANAGED = {"address", "port", "basic_auth", "auth", "unix_socket", "auth_provider", "oauth2_key",
           "oauth2_secret", "oauth2_redirect_uri", "conf", "url_prefix", "debug"}
_EMAIL_RE = re.compile(r"^[A-Za-z0-9!#%&'+/=?^_`{}~-]+(?:\\\.[A-Za-z0-9!#%&'+/=?^_`{}~-]+)*"
                       r"@[A-Za-z0-9-]+(?:\\\.[A-Za-z0-9-]+)+\$$")
_WILDCARD_RE = re.compile(r"^\^?\.\*@[A-Za-z0-9-]+(?:\\\.[A-Za-z0-9-]+)+\$$")


def flower_auth_pattern(pattern: str) -> str:
    """Translate an anchored OAuth email regex into Flower 2's ``--auth`` syntax.

    Accepted: ``.*@example\\.org$`` (any user of one domain) or exact addresses
    ``alice@example\\.org$|bob@example\\.org$``. Unescaped dots or a missing ``$`` are refused:
    ``.*@example.org`` would also admit ``eve@exampleXorg`` in a regex matcher.
    """
    parts = pattern.split("|")
    wild = [p for p in parts if "*" in p]
    if wild and len(parts) > 1:
        raise ConfigError(f"OAuth pattern {pattern!r} mixes a wildcard with '|'; use one .*@domain\\.tld$ "
                          "or a list of exact addresses")
    for part in parts:
        if not (_WILDCARD_RE.match(part) or _EMAIL_RE.match(part)):
            raise ConfigError(
                f"OAuth pattern {part!r} is not anchored; write it like '.*@example\\.org$' "
                "(escape every dot, end with $)")
    flower = [p.removeprefix("^").removesuffix("$").replace("\\.", ".") for p in parts]
    return "|".join(flower)


def _option_name(arg: str) -> str:
    return arg.lstrip("-").partition("=")[0].replace("-", "_")


def flower_argv(address: str, port: int, extra: tuple[str, ...] = (), auth_provider: str | None = None,
                oauth2_key: str | None = None, oauth2_redirect_uri: str | None = None,
                url_prefix: str | None = None) -> list[str]:
    """The ``celery -A ccci_dist flower`` argv (no secrets: those go in the environment)."""
    from ccci_dist.engine.profiles import celery_argv

    argv = [*celery_argv(), "-A", "ccci_dist", "flower", f"--address={address}", f"--port={port}"]
    if auth_provider:
        argv.append(f"--auth_provider={auth_provider}")
    if oauth2_key:
        argv.append(f"--oauth2_key={oauth2_key}")
    if oauth2_redirect_uri:
        argv.append(f"--oauth2_redirect_uri={oauth2_redirect_uri}")
    if url_prefix:
        argv.append(f"--url_prefix={url_prefix}")
    return [*argv, *extra]


@click.command("flower", context_settings={"ignore_unknown_options": True})
@click.option("--address", default="127.0.0.1", show_default=True, envvar="CCCI_FLOWER_ADDRESS",
              help="Listen address; non-loopback needs --basic-auth-file or --auth.")
@click.option("--port", default=5555, show_default=True, type=click.IntRange(1, 65535), envvar="CCCI_FLOWER_PORT")
@click.option("--basic-auth-file", metavar="FILE", envvar="CCCI_FLOWER_BASIC_AUTH_FILE",
              help="File with user:password lines (passed to Flower via FLOWER_BASIC_AUTH, not argv).")
@click.option("--auth", "auth_pattern", metavar="REGEX", envvar="CCCI_FLOWER_AUTH",
              help="OAuth: allowed emails, anchored, e.g. '.*@example\\.org$'.")
@click.option("--auth-provider", metavar="CLASS",
              help="OAuth login handler, e.g. flower.views.auth.GithubLoginHandler.")
@click.option("--oauth2-key", metavar="KEY", help="OAuth client id.")
@click.option("--oauth2-secret-file", metavar="FILE",
              help="File with the OAuth client secret (or set FLOWER_OAUTH2_SECRET).")
@click.option("--oauth2-redirect-uri", metavar="URI")
@click.option("--url-prefix", metavar="PREFIX", help="Serve under this path (behind a reverse proxy).")
@click.option("--dry-run", is_flag=True, help="Print the command and env keys; do not start.")
@click.argument("flower_args", nargs=-1, type=click.UNPROCESSED)
@click.pass_obj
def flower_cmd(obj: Any, address: str, port: int, basic_auth_file: str | None, auth_pattern: str | None,
               auth_provider: str | None, oauth2_key: str | None, oauth2_secret_file: str | None,
               oauth2_redirect_uri: str | None, url_prefix: str | None, dry_run: bool,
               flower_args: tuple[str, ...]) -> None:
    """Start Flower (the Celery monitor) with authentication; extra args go to Flower."""
    from ccci_dist.cli import fail
    from ccci_dist.cli.workers import _exec, _show
    from ccci_dist.engine.profiles import child_env

    try:
        env, changed = child_env(obj)
        for key in ("FLOWER_ADDRESS", "FLOWER_PORT", "FLOWER_UNIX_SOCKET", "FLOWER_CONF", "FLOWER_DEBUG"):
            env.pop(key, None)  # this command decides these
        for arg in flower_args:
            if arg.startswith("-") and _option_name(arg) in MANAGED:
                raise ConfigError(f"pass {arg.partition('=')[0]} as a ccci-dist flower option, not through; "
                                  "see `ccci-dist flower --help`")

        def put(key: str, value: str) -> None:
            env[key] = value
            if key not in changed:
                changed.append(key)

        if basic_auth_file:
            put("FLOWER_BASIC_AUTH", read_basic_auth(basic_auth_file))
        auth_pattern = auth_pattern or env.pop("FLOWER_AUTH", None)
        if auth_pattern:
            put("FLOWER_AUTH", flower_auth_pattern(auth_pattern))
            if not auth_provider:
                raise ConfigError("--auth needs --auth-provider (e.g. flower.views.auth.GoogleAuth2LoginHandler)")
            if oauth2_secret_file:
                try:
                    secret = Path(oauth2_secret_file).expanduser().read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ConfigError(f"cannot read --oauth2-secret-file {oauth2_secret_file}: {exc.strerror}; "
                                      "fix the path or its permissions") from exc
                put("FLOWER_OAUTH2_SECRET", secret)
            if not (oauth2_key or env.get("FLOWER_OAUTH2_KEY")) or not env.get("FLOWER_OAUTH2_SECRET"):
                raise ConfigError("--auth needs --oauth2-key and --oauth2-secret-file (or FLOWER_OAUTH2_SECRET)")
        has_auth = bool(env.get("FLOWER_BASIC_AUTH") or env.get("FLOWER_AUTH"))
        if not has_auth and not is_loopback(address):
            raise ConfigError(
                f"refusing to serve Flower on {address or 'all interfaces'} without authentication; "
                "pass --basic-auth-file FILE (user:password) or --auth, or use --address 127.0.0.1")
    except ConfigError as exc:
        fail(str(exc))
    argv = flower_argv(address, port, flower_args, auth_provider, oauth2_key, oauth2_redirect_uri, url_prefix)
    if dry_run:
        _show(argv, changed)
        return
    if not has_auth:
        click.echo(f"note: Flower on {address}:{port} has no login (loopback only)", err=True)
    sys.stdout.flush()
    _exec(argv, env)
