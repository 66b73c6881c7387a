"""Use cases: what a command does, with the outside world reached through the small protocols of
:mod:`qwendeploy.app.ports`. Imports core, errors and app.ports only — never adapters, typer or rich; the CLI
parses and renders, ``cli/wiring.py`` builds the adapters."""
