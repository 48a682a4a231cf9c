"""A setup's settings of each method: applied right after the method's config, before the command line.

A run combines a *setup* file (data, backbone, classifier, evaluator, shared trainer options) with a *method* file
(the method's own options), ``-c configs/setups/<setup>.yaml -c configs/methods/<method>.yaml``. A method file names
itself (``name: distribution_guidance``); a setup may hold values tuned for it under ``method_settings.<name>``
(e.g. the guidance scale that suits the setup's model). Those values are given to the parser as one more config,
after the last config file and before the options of the command line, so that they replace the method's defaults
and the command line still replaces them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

CONFIG_FLAGS = ("-c", "--config")


def with_method_settings(arguments: list[str]) -> list[str]:
    """``arguments`` with the setup's settings of the named method inserted after the last config (if any)."""
    configs = _config_values(arguments)
    if not configs:
        return arguments
    name, settings = None, None
    for _, value in configs:
        content = _read_config(value)
        name = content.get("name", name)
        settings = content.get("method_settings", settings)
    name = _command_line_value(arguments, "--name", name)
    if not settings or name not in settings:
        return arguments
    chosen = settings[name]
    if not isinstance(chosen, dict):
        raise ValueError(f"Option 'method_settings.{name}' must be a mapping of options, got {chosen!r}")
    last = configs[-1][0] + 1
    return [*arguments[:last], "--config", yaml.safe_dump(chosen, sort_keys=False), *arguments[last:]]


def _config_values(arguments: list[str]) -> list[tuple[int, str]]:
    """``(index of the value's last argument, value)`` of every config given with ``-c``/``--config``."""
    found = []
    for index, argument in enumerate(arguments):
        if argument in CONFIG_FLAGS and index + 1 < len(arguments):
            found.append((index + 1, arguments[index + 1]))
        elif argument.startswith("--config="):
            found.append((index, argument.partition("=")[2]))
    return found


def _read_config(value: str) -> dict[str, Any]:
    """A config given as a file or as YAML text, as a mapping (anything else as an empty one)."""
    path = Path(value)
    try:
        text = path.read_text() if path.is_file() else value
    except OSError:
        return {}
    try:
        content = yaml.safe_load(text)
    except yaml.YAMLError:
        return {}  # the parser reports it, naming the file
    return content if isinstance(content, dict) else {}


def _command_line_value(arguments: list[str], flag: str, default: Any) -> Any:
    """The last value of ``flag`` on the command line (``--flag value`` or ``--flag=value``), else ``default``."""
    value = default
    for index, argument in enumerate(arguments):
        if argument == flag and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif argument.startswith(f"{flag}="):
            value = argument.partition("=")[2]
    return value
