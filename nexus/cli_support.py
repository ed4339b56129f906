"""What every `nexus` command shares, apart from `nexus.cli` so that the domain commands it gathers
(`nexus.importing.cli`, `nexus.pricing.cli`, ...) can use it without importing the module that
imports them."""

from __future__ import annotations

import click

from nexus.settings import Settings, SettingsError, load_settings


def settings_or_exit() -> Settings:
    """The settings, or the command ends with the settings error as its message (exit status 1)."""
    try:
        return load_settings()
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
