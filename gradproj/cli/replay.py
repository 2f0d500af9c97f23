"""Replayable runs: every command that writes a folder writes ``config.yaml`` there, and
``--config FILE`` runs it again.

``config.yaml`` holds the command, every option value (``settings``: the command's parameters
by name, as click received them), the gradproj version, the git commit of the checkout when
gradproj runs from one, and the versions of the packages that shape the numbers. ``--config``
loads ``settings`` as the command's defaults (click's ``default_map``), so options given on the
command line win: ``gradproj select --config OUT/config.yaml --out OUT2`` reruns OUT's selection
into OUT2.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
from pathlib import Path

import click

from gradproj import __version__
from gradproj.core.atomic import write_atomic
from gradproj.core.errors import BadInput

CONFIG_FILE = "config.yaml"
PACKAGES = ("torch", "transformers", "peft", "trl", "datasets", "faiss-cpu", "traker", "numpy")


def _git_commit() -> str | None:
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def _versions() -> dict[str, str]:
    found = {}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def _plain(value):
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    return value


def write_config(folder, ctx: click.Context) -> Path:
    """Write FOLDER/config.yaml for the command ``ctx`` ran (atomically)."""
    import yaml

    record = {"command": ctx.command_path.split(" ", 1)[-1],
              "settings": {k: _plain(v) for k, v in sorted(ctx.params.items())},
              "gradproj_version": __version__, "git_commit": _git_commit(),
              "packages": _versions()}
    path = Path(folder) / CONFIG_FILE
    write_atomic(path, yaml.safe_dump(record, sort_keys=False, allow_unicode=True))
    return path


def read_config(path) -> dict:
    """The ``settings`` of a config.yaml, checked to be one."""
    import yaml

    try:
        record = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BadInput(f"{path}: cannot read the config ({err})") from None
    if not isinstance(record, dict) or not isinstance(record.get("settings"), dict):
        raise BadInput(f"{path}: not a gradproj config.yaml (no 'settings')")
    return record


def _load(ctx: click.Context, param, value):
    if value is None:
        return None
    record = read_config(value)
    command = ctx.command_path.split(" ", 1)[-1]
    if record.get("command") not in (None, command):
        raise click.BadParameter(f"{value} is a config of 'gradproj {record['command']}', "
                                 f"not of 'gradproj {command}'")
    known = {p.name for p in ctx.command.params}
    ctx.default_map = {**(ctx.default_map or {}),
                       **{k: v for k, v in record["settings"].items() if k in known}}
    return value


def config_option(fn):
    """``--config FILE``: defaults from a config.yaml written by an earlier run."""
    return click.option("--config", type=click.Path(exists=True, dir_okay=False), is_eager=True,
                        expose_value=False, callback=_load,
                        help="Run again from a config.yaml an earlier run wrote (options given "
                             "here override it).")(fn)
