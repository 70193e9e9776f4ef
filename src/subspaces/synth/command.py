"""The `command` engine: any program, run once per clip from a shell template.

The template (`params["command"]`) must use `{text}` and `{out}` (the wave file to
write); further placeholders are filled from the voice's other parameters, e.g.
`{ref_audio}` for a voice-cloning TTS such as F5-TTS. Values are shell-quoted.
`timeout_s` bounds one run (default 120 s). Command voices take no `warp` and are
made by hand, not sampled.

>>> default_speaker({"command": "my-tts {text} {out}"})
'command-d2ff46e6'
"""

from __future__ import annotations

import hashlib
import json
import shlex
import string
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .base import DEFAULT_TIMEOUT_S, SynthError, Voice, VoiceError, check_range, read_wave, run

__all__: list[str] = []

ENGINE = "command"
# Command voices are written by hand: there is nothing to draw their parameters from.
sample = None


def _template_fields(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise VoiceError(f"command template {template!r} is malformed ({error}); write a literal brace as {{{{ or }}}}") from error


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """The template uses {text} and {out}, and every other placeholder has a value."""
    template = params.get("command")
    if not isinstance(template, str) or not template.strip():
        raise VoiceError(
            "a command voice needs params['command'], a shell template such as "
            "'my-tts --ref {ref_audio} --text {text} --out {out}'"
        )
    fields = _template_fields(template)
    if "text" not in fields or "out" not in fields:
        raise VoiceError(f"command template {template!r} must use both {{text}} and {{out}}; it uses {sorted(fields)}")
    missing = sorted(fields - {"text", "out"} - set(params))
    if missing:
        raise VoiceError(
            f"command template {template!r} uses {', '.join('{' + m + '}' for m in missing)} "
            f"but the voice's params give no value for it; params are {sorted(params)}"
        )
    if "timeout_s" in params:
        params["timeout_s"] = check_range(ENGINE, "timeout_s", params["timeout_s"], (0.001, 86400.0), float)
    return params


def default_speaker(params: Mapping[str, Any]) -> str:
    """`command-` and 8 hex digits of the parameters' hash."""
    digest = hashlib.sha1(json.dumps(dict(params), sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"command-{digest}"


def base_name(voice: Voice) -> str:
    """The speaker id: nothing else is known about who a command speaks as."""
    return voice.speaker


def synthesize(voice: Voice, text: str) -> tuple[np.ndarray, int]:
    """Run the filled-in template in a shell and read the wave file it wrote at {out}."""
    p = voice.params
    with tempfile.TemporaryDirectory(prefix="subspaces-tts-") as folder:
        out = Path(folder) / "out.wav"
        values = {k: shlex.quote(str(v)) for k, v in p.items() if k not in ("command", "timeout_s")}
        values.update(text=shlex.quote(text), out=shlex.quote(str(out)))
        command = p["command"].format_map(values)
        run(command, voice, text, shell=True, timeout_s=float(p.get("timeout_s", DEFAULT_TIMEOUT_S)))
        if not out.is_file():
            raise SynthError(f"command voice {voice.speaker} exited 0 but wrote nothing at {{out}} for {text!r}: {command}")
        return read_wave(out, voice, text)


def save_files(voice: Voice, folder: Path) -> dict[str, str]:
    """Nothing: a command voice is all in its parameters (its files are the user's)."""
    return {}


def check_installed() -> None:
    """Nothing to check before the first clip: the template's program is the user's."""
