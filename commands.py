"""The command line: the framework's own commands (what `cli.run_app` runs) with `check` and
`inventory` added, so `python agent.py --help` lists every command. Imported only by `main`: typer
and click are not loaded into every call's process."""

from __future__ import annotations

import typer

from worker import TruthfulServer


def cli_app(server: TruthfulServer) -> typer.Typer:
    """The framework's own command line (what `cli.run_app` runs: `_legacy._build_cli`, pinned
    1.8.9) with `check` and `inventory` added, so `python agent.py --help` lists every command."""
    from livekit.agents.cli import _legacy

    app = _legacy._build_cli(server)

    # preflight parses its own options (--timeout, --help)
    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                   "help_option_names": []})
    def check(ctx: typer.Context) -> None:
        """Check the settings, every credential (one request each) and the inventory before going live."""
        import preflight

        raise typer.Exit(int(preflight.main(list(ctx.args)) or 0))

    @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                                   "help_option_names": []})
    def inventory(ctx: typer.Context) -> None:
        """The inventory from a shell: list, book, replay (add --json for scripts)."""
        import inventory_cli

        raise typer.Exit(inventory_cli.main(list(ctx.args)))

    return app
