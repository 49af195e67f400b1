"""``ccci-dist web``: serve the dashboard; loopback by default, off loopback only with a login."""

from __future__ import annotations

import sys
from typing import Any

import click

from ccci_dist.config import ConfigError


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command("web")
@click.option("--address", default="127.0.0.1", show_default=True, envvar="CCCI_WEB_ADDRESS",
              help="Listen address; non-loopback needs --basic-auth-file or --token-file.")
@click.option("--port", default=8088, show_default=True, type=click.IntRange(1, 65535), envvar="CCCI_WEB_PORT")
@click.option("--basic-auth-file", metavar="FILE", envvar="CCCI_WEB_BASIC_AUTH_FILE",
              help="File with user:password lines (HTTP basic auth).")
@click.option("--token-file", metavar="FILE", envvar="CCCI_WEB_TOKEN_FILE",
              help="File with an access token (Bearer header, or the login page).")
@click.option("--check", is_flag=True, help="Check the options and the broker, print the URL, and exit.")
@click.pass_obj
def web_cmd(obj: Any, address: str, port: int, basic_auth_file: str | None, token_file: str | None,
            check: bool) -> None:
    """Serve the loop dashboard (runs, loops, D-items, timeline, cost, live logs, actions)."""
    try:
        import tornado  # noqa: F401 - the dashboard's server (the [scheduler] extra, with Flower)
    except ImportError:
        _fail("the dashboard needs tornado; install the scheduler extra: pip install 'ccci-dist[scheduler]'")
    from ccci_dist.adapters.broker import client
    from ccci_dist.engine.access import is_loopback, read_basic_auth, read_token
    from ccci_dist.engine.app import use_settings
    from ccci_dist.logsetup import configure_logging, register_secret
    from ccci_dist.state.store import Store
    from ccci_dist.web.app import Access, make_app

    try:
        s = obj.settings
        basic = [tuple(p.split(":", 1)) for p in read_basic_auth(basic_auth_file).split(",")] if basic_auth_file else []
        access = Access(basic=basic, token=read_token(token_file) if token_file else "")
        if not access.required and not is_loopback(address):
            raise ConfigError(f"refusing to serve the dashboard on {address or 'all interfaces'} without a login; "
                              "pass --basic-auth-file FILE or --token-file FILE, or use --address 127.0.0.1")
        use_settings(s)
        store = Store(client(s))
        store.runs()
    except ConfigError as exc:
        _fail(str(exc))
    except Exception as exc:  # the broker is away (a redis error): one line, no traceback
        _fail(f"cannot reach the broker ({exc.__class__.__name__}); start Redis or fix broker_url")
    for _, password in access.basic:
        register_secret(password)
    register_secret(access.token)
    url = f"http://{address if ':' not in address else f'[{address}]'}:{port}/"
    if check:
        click.echo(f"ok: would serve {url} ({'login required' if access.required else 'no login, loopback only'})")
        return
    import tornado.ioloop

    configure_logging("INFO")
    app = make_app(store, s, access)
    try:
        app.listen(port, address, xheaders=False)
    except OSError as exc:  # in use, or an address this host does not have: the operator's input
        _fail(f"cannot listen on {address}:{port} ({exc.strerror or exc}); pick another --port or --address")
    click.echo(f"dashboard on {url} ({'login required' if access.required else 'no login: loopback only'})", err=True)
    sys.stderr.flush()
    try:
        tornado.ioloop.IOLoop.current().start()
    except KeyboardInterrupt:
        pass
